"""``configs/data/*.yaml``: ZenML run configs of the data-preparation pipeline.

Each file is loaded the way ``zenml pipeline run … -c FILE`` loads it and its
parameters are checked against the pipeline's signature, the recipe registry,
``PrepareConfig`` and the recipe's declared options — without running anything.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "data"
FILES = sorted(CONFIG_DIR.glob("*.yaml"))


def _check(path: Path) -> dict:
    """Validate one run config; returns its parameters bound to the pipeline's signature."""
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    from neuralmark.components.data.datasets import get_recipe
    from neuralmark.components.data.prepare import effective_config
    from neuralmark.pipelines.data_preparation import data_preparation_pipeline, split_config

    run = PipelineRunConfiguration.model_validate(yaml.safe_load(path.read_text()))
    signature = inspect.signature(data_preparation_pipeline.entrypoint)
    unknown = sorted(set(run.parameters or {}) - set(signature.parameters))
    if unknown:
        raise TypeError(f"{path.name}: unknown pipeline parameter(s) {unknown}; expected "
                        f"{list(signature.parameters)}")
    bound = signature.bind(**(run.parameters or {}))  # TypeError names a missing one
    bound.apply_defaults()
    params = dict(bound.arguments)
    prep_config, options = split_config(params["config"])
    effective = effective_config(get_recipe(params["dataset"]), prep_config)
    unknown_steps = set(run.steps or {}) - {"prepare", "validate", "version"}
    assert not unknown_steps, f"{path.name}: no such step(s) {sorted(unknown_steps)}"
    return {"params": params, "effective": effective, "options": options}


def test_there_is_a_config_for_every_recipe():
    from neuralmark.components.data.datasets import available_datasets

    covered = {yaml.safe_load(p.read_text())["parameters"]["dataset"] for p in FILES}
    assert covered == set(available_datasets())


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_config_loads_and_fits_the_pipeline(path: Path):
    checked = _check(path)
    params = checked["params"]
    assert params["source"].startswith("~/Downloads/"), "a placeholder the user edits"
    assert checked["options"]["version_with_dvc"] is True
    if params["dataset"] == "image_folder":
        assert params["out"] == f"data/{path.stem}"  # DIV2K and KTH-TIPS apart
    else:
        assert path.stem == params["dataset"] and params["out"] == "data"


def test_the_voc_fractions_are_the_seed_split():
    from neuralmark.components.data.readers.voc import SEED_FRACTIONS

    effective = _check(CONFIG_DIR / "voc_derain.yaml")["effective"]
    assert effective.fractions == pytest.approx(SEED_FRACTIONS)


def test_a_typo_in_a_config_is_named(tmp_path: Path):
    from neuralmark.components.errors import InputError

    raw = yaml.safe_load((CONFIG_DIR / "mirflickr25k.yaml").read_text())
    raw["parameters"]["config"]["sise"] = 400
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="sise"):
        _check(tmp_path / "typo.yaml")
    raw = yaml.safe_load((CONFIG_DIR / "voc_derain.yaml").read_text())
    raw["parameters"]["config"]["options"] = {"rain_hazee": True}
    (tmp_path / "option.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="rain_hazee"):
        _check(tmp_path / "option.yaml")
    raw["parameters"]["datset"] = raw["parameters"].pop("dataset")
    (tmp_path / "param.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(TypeError, match="datset"):
        _check(tmp_path / "param.yaml")

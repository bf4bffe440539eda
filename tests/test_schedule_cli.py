"""``neuralmark train METHOD --schedule CRON``: refused before anything is submitted when the
cron expression is not one, or when the active stack's orchestrator cannot schedule."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from neuralmark.cli.app import app
from neuralmark.components.methods.base import InputError
from tests.isolation import isolated_zenml_project


@pytest.mark.parametrize("cron, message", [
    ("0 3 * *", "needs 5 fields"),
    ("0 25 * * *", "hour '25' is outside 0-23"),
])
def test_bad_cron_is_refused_before_any_pipeline_loads(cron, message):
    result = CliRunner().invoke(app, ["train", "pgd_signer", "--schedule", cron])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_schedule_and_variants_are_refused_together():
    result = CliRunner().invoke(app, ["train", "anti_forward", "--schedule", "0 3 * * 1",
                                      "--variant", "all"])
    assert result.exit_code == 2
    assert "give --schedule or --variant, not both" in " ".join(result.output.split())


def test_local_orchestrator_cannot_schedule(tmp_path):
    from zenml.client import Client

    from neuralmark.pipelines.training import schedule_training

    with isolated_zenml_project(tmp_path):
        Client.initialize(root=tmp_path)
        with pytest.raises(InputError, match=r"--schedule needs a remote stack whose "
                                             r"orchestrator schedules runs; the active stack "
                                             r"'default' has the 'local' orchestrator"):
            schedule_training("pgd_signer", "tiny", "0 3 * * 1", project_root=tmp_path)
        assert not list(Client().list_schedules().items)
        assert not list(Client().list_pipeline_runs().items)


def test_a_config_with_its_own_schedule_is_refused(tmp_path):
    from neuralmark.pipelines.training import schedule_training
    from neuralmark.runtime.k8s_runs import K8S_CONFIGS_DIR

    with pytest.raises(InputError, match=r"pgd_signer_weekly\.yaml has its own schedule"):
        schedule_training("pgd_signer", "full", "0 3 * * 1",
                          K8S_CONFIGS_DIR / "pgd_signer_weekly.yaml", project_root=tmp_path)

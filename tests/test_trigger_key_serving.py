"""A registered trigger_key model served through MLflow pyfunc does the host's task.

Through real parts: the shipped marked DnCNN bundle, registered with
``integrations.model_registry.register_candidate`` in a temporary sqlite MLflow store,
loaded back with ``mlflow.pyfunc.load_model("models:/…@challenger")`` and asked to denoise
a noisy photo given as an array and as a PNG file. Denoising must raise the PSNR against
the clean photo (the shipped host: 20.49 → 28.49 dB on the astronaut crop when written).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from neuralmark.components.errors import InputError
from neuralmark.components.methods import build, load_bundle
from neuralmark.components.methods.registry import shipped_bundle
from neuralmark.components.methods.trigger_key.serving import (
    array_to_image,
    host_requests,
    process_image,
    serve,
)
from neuralmark.components.metrics import psnr
from neuralmark.integrations import model_registry as reg
from neuralmark.runtime.stack import ensure_experiment, tracking_uri
from tests.isolation import mlflow_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODEL = "neuralmark-trigger_key-serving-test"


@pytest.fixture(scope="module")
def shipped():
    return load_bundle(shipped_bundle("trigger_key"))


@pytest.fixture(scope="module")
def noisy_pair(shipped):
    """(clean, noisy) grey 96×96 crops of the astronaut at the host's σ, as H×W arrays."""
    from skimage import data

    grey = data.astronaut()[100:196, 180:276].astype(np.float32).mean(-1) / 255
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(grey.shape, generator=g).numpy() * shipped.config.sigma
    return grey, np.clip(grey + noise, 0, 1).astype(np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(psnr(torch.from_numpy(np.asarray(a))[None, None],
                      torch.from_numpy(b)[None, None])[0])


def test_requests_of_every_shape_and_bad_ones_named() -> None:
    arr = np.zeros((8, 8), np.uint8)
    assert [r.path for r in host_requests({"paths": ["a.png", "b.png"]})] == ["a.png", "b.png"]
    assert host_requests({"image": arr})[0].image is not None
    assert len(host_requests([{"image": arr}, {"path": "x.png"}])) == 2
    for bad, named in (({"secret": "s"}, "unknown field"), ({}, "no images"),
                       ([{"image": arr, "path": "a.png"}], "exactly one"),
                       ({"images": [["a", "b"]]}, "numeric"), ("a.png", "expected images")):
        with pytest.raises(InputError, match=named):
            host_requests(bad)
    for bad, named in ((np.zeros((2, 2, 2)), "H×W×C"), (np.full((4, 4), 2.0), r"\[0, 1\]"),
                       (np.full((4, 4), np.nan), "NaN")):
        with pytest.raises(InputError, match=named):
            array_to_image(bad)
    assert torch.equal(array_to_image(np.full((2, 3), 255, np.uint8)), torch.ones(1, 2, 3))


def test_the_shipped_host_denoises_what_it_is_served(shipped, noisy_pair, tmp_path) -> None:
    clean, noisy = noisy_pair
    Image.fromarray((noisy * 255).round().astype(np.uint8)).save(tmp_path / "noisy.png")
    out = serve(shipped, {"images": [noisy], "paths": [str(tmp_path / "noisy.png"),
                                                       str(tmp_path / "missing.png")]})
    assert [o["index"] for o in out] == [0, 1, 2]
    from_array, from_file, missing = out
    assert from_array["status"] == "ok" and from_array["shape"] == [96, 96]
    denoised = np.asarray(from_array["image"], np.float32)
    assert _psnr(denoised, clean) > _psnr(noisy, clean) + 3.0
    # the file is the same image up to 8-bit rounding
    assert _psnr(np.asarray(from_file["image"], np.float32), denoised) > 40
    assert missing["status"] == "unreadable" and "missing.png" in missing["reason"]


def test_an_sr_host_returns_the_upscaled_size() -> None:
    m = build("trigger_key", {"task": "sr", "arch": "vdsr", "scale": 3, "channels": 3,
                              "depth": 3, "width": 4})
    out = process_image(m, torch.rand(3, 10, 12))
    assert out.shape == (3, 30, 36) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_a_registered_trigger_key_model_serves_its_task_through_mlflow(
        shipped, noisy_pair, tmp_path) -> None:
    clean, noisy = noisy_pair
    with mlflow_store(tracking_uri(tmp_path)):
        exp = ensure_experiment("nm-trigger-key-serving", tmp_path)
        with mlflow.start_run(experiment_id=exp):
            version = reg.register_candidate(shipped_bundle("trigger_key"), MODEL,
                                             {"psnr": 1.0}, {"promote": False, "reasons": []})
        served = mlflow.pyfunc.load_model(f"models:/{MODEL}@challenger")
        out = served.predict({"images": [noisy]})
        assert version == "1" and len(out) == 1 and out[0]["task"] == "denoise"
        denoised = np.asarray(out[0]["image"], np.float32)
        direct = process_image(shipped, torch.from_numpy(noisy)[None])[0].numpy()
        assert np.allclose(denoised, direct, atol=1e-5)
        assert _psnr(denoised, clean) > _psnr(noisy, clean) + 3.0
        with pytest.raises(MlflowException, match="bad denoise request: .*unknown field"):
            served.predict({"paths": ["a.png"], "secret": "s"})

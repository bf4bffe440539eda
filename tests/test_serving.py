"""``components.serving``: batch verification (same answers as one-by-one, in order, robust)
and the requests of a served verifier (every shape MLflow passes, or a named refusal)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from neuralmark.components.imageio import load_image
from neuralmark.components.methods import load_bundle
from neuralmark.components.methods.base import InputError, Status, WatermarkKey
from neuralmark.components.methods.registry import PRETRAINED_DIR
from neuralmark.components.serving import (
    BatchVerifier,
    VerifyRequest,
    verify_file,
    verify_requests,
    working_view,
)

KEY = WatermarkKey("owner secret", 3)


@pytest.fixture(scope="module")
def signer():
    return load_bundle(PRETRAINED_DIR / "pgd_signer")


def _crops(photo) -> list[torch.Tensor]:
    """Three real-photo crops of different sizes, 3×H×W in [0, 1]."""
    t = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    return [t[:, :256, :256], t[:, 100:420, 50:290], t[:, 200:296, 300:460]]


def test_batches_give_the_one_by_one_answers_in_order(signer, photo):
    crops = _crops(photo)
    verifier = BatchVerifier(signer, KEY, batch_size=2)
    batched = verifier.verify_tensors(crops)
    size = signer.config.working_size
    single = [signer.verify(working_view(c, size), KEY)[0] for c in crops]
    assert [v.bits for v in batched] == [v.bits for v in single]
    assert [v.score for v in batched] == pytest.approx([v.score for v in single], abs=1e-6)


def test_bad_images_are_unreadable_and_do_not_stop_the_batch(signer, photo, tmp_path):
    crops = _crops(photo)
    good = tmp_path / "a.png"
    Image.fromarray(photo[:200, :200]).save(good)
    corrupt = tmp_path / "b.png"
    corrupt.write_bytes(good.read_bytes()[:300])
    tiny = tmp_path / "c.png"
    Image.fromarray(photo[:20, :20]).save(tiny)
    out = list(BatchVerifier(signer, KEY, batch_size=2).verify_files([good, corrupt, tiny, good]))
    assert [p.name for p, _ in out] == ["a.png", "b.png", "c.png", "a.png"]
    assert [v.status for _, v in out] == [out[0][1].status, Status.UNREADABLE,
                                          Status.UNREADABLE, out[0][1].status]
    assert out[0][1].status != Status.UNREADABLE
    assert "b.png" in out[1][1].reason and "c.png" in out[2][1].reason
    assert out[0][1].score == pytest.approx(out[3][1].score)

    nan = crops[0].clone()
    nan[0, 0, 0] = float("nan")
    verdicts = BatchVerifier(signer, KEY).verify_tensors([nan, crops[1], crops[2][:, :30, :30]])
    assert [v.status for v in verdicts][0::2] == [Status.UNREADABLE, Status.UNREADABLE]
    assert verdicts[1].status != Status.UNREADABLE


def test_rejects_what_it_cannot_batch(signer):
    with pytest.raises(InputError, match="batch_size"):
        BatchVerifier(signer, KEY, batch_size=0)


# -- requests of a served verifier ------------------------------------------------------------


def test_verify_requests_read_every_shape_mlflow_passes():
    a, b = "photos/a.png", "photos/b.png"
    want = [VerifyRequest(a, WatermarkKey("s", 7)), VerifyRequest(b, WatermarkKey("s", 7))]
    shapes = [
        {"paths": [a, b], "secret": "s", "message": 7},                       # plain Python
        {"paths": np.array([a, b]), "secret": np.array("s"), "message": np.array(7)},  # inputs
        {"path": np.array([a, b]), "secret": np.array(["s", "s"]),            # instances
         "message": np.array([7, 7])},
        [{"path": np.array(a), "secret": np.array("s"), "message": np.array(7)},  # inputs rows
         {"path": np.array(b), "secret": np.array("s"), "message": np.array(7)}],
        np.array([{"path": a, "secret": "s", "message": 7},
                  {"path": b, "secret": "s", "message": 7}], dtype=object),
        pd.DataFrame({"path": [a, b], "secret": ["s", "s"], "message": [7, 7]}),
        pd.DataFrame({"path": [a, b], "secret": ["s", "s"], "message": [7.0, 7.0]}),
    ]
    for shape in shapes:
        assert verify_requests(shape) == want, shape
    gaps = pd.DataFrame({"path": [a, b], "secret": ["s", "t"], "message": [7, None]})
    assert verify_requests(gaps) == [VerifyRequest(a, WatermarkKey("s", 7)),
                                     VerifyRequest(b, WatermarkKey("t"))]
    assert verify_requests({"path": a, "secret": "s"}) == [VerifyRequest(a, WatermarkKey("s"))]
    assert verify_requests([]) == []


@pytest.mark.parametrize("payload, named", [
    (None, "cannot read a verification request from NoneType"),
    ("photos/a.png", "cannot read a verification request from str"),
    ({"paths": ["a.png"]}, "input: 'secret' is missing"),
    ({"secret": "s"}, "'paths' (a list of image paths) or 'path' is missing"),
    ({"paths": ["a.png"], "path": "b.png", "secret": "s"}, "either 'path' or 'paths'"),
    ({"paths": ["a.png"], "secret": "s", "mesage": 1}, "unknown field 'mesage'"),
    ({"paths": ["a.png"], "secret": np.array(7)}, "'secret' must be a non-empty string"),
    ({"paths": ["a.png"], "secret": "  "}, "'secret' must be a non-empty string"),
    ({"paths": ["a.png"], "secret": "s", "message": True}, "'message' must be"),
    ({"paths": ["a.png"], "secret": "s", "message": "7"}, "'message' must be"),
    ({"paths": ["a.png"], "secret": "s", "message": 2.5}, "'message' must be"),
    ({"paths": ["a.png", "b.png"], "secret": ["s", "t", "u"]}, "2 paths but 3 values"),
    ({"paths": ["a.png", ""], "secret": "s"}, "input, path 1: 'path' must be"),
    ([{"path": "a.png", "secret": "s"}, "b.png"], "row 1: expected an object"),
    (pd.DataFrame({"path": ["a.png", "b.png"], "secret": ["s", None]}), "row 1: 'secret' is"),
])
def test_verify_requests_refuse_what_they_cannot_read(payload, named):
    with pytest.raises(InputError) as err:
        verify_requests(payload)
    assert named in str(err.value)


def test_verify_file_answers_as_verify_and_names_an_unreadable_file(signer, photo, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(photo[:200, :200]).save(path)
    image = load_image(path, min_size=signer.min_size).tensor
    assert verify_file(signer, path, KEY).to_dict() == signer.verify(image, KEY)[0].to_dict()
    missing = verify_file(signer, tmp_path / "gone.png", KEY)
    assert missing.status == Status.UNREADABLE and "gone.png" in missing.reason

"""The shipped pgd_signer weights: present, small, documented, and working from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from neuralmark.cli.app import app
from neuralmark.components.methods import load_bundle
from neuralmark.components.methods.registry import PRETRAINED_DIR

SHIPPED = PRETRAINED_DIR / "pgd_signer"


def test_shipped_bundle_is_complete_small_and_documented():
    for name in ("config.json", "weights.safetensors", "state.json", "MODEL_CARD.md"):
        assert (SHIPPED / name).is_file(), f"missing {name} in {SHIPPED}"
    assert (SHIPPED / "weights.safetensors").stat().st_size < 5 * 2**20
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    for needle in ("## Training", "PSNR", "FPR", "| jpeg_50 |"):
        assert needle in card, f"model card lacks {needle!r}"
    method = load_bundle(SHIPPED)
    assert method.key == "pgd_signer" and method.config.working_size == 256


@pytest.fixture(scope="module")
def signed_photo(tmp_path_factory, photo) -> tuple[Path, Path]:
    """A 256×256 crop of a real photo, signed by the CLI with the shipped weights."""
    root = tmp_path_factory.mktemp("shipped")
    src, dst = root / "astronaut.png", root / "astronaut.signed.png"
    Image.fromarray(photo[0:256, 128:384]).save(src)
    result = CliRunner().invoke(app, ["embed", "--key", "owner secret", "--message", "3",
                                      str(src), str(dst)])
    assert result.exit_code == 0, result.output
    assert "PSNR" in result.output
    return src, dst


def _verify(path: Path, *extra: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["verify", "--json", *extra, str(path)])
    return result.exit_code, json.loads(result.output.strip().splitlines()[-1])


def test_cli_round_trip_on_a_real_photo(signed_photo):
    _, dst = signed_photo
    code, v = _verify(dst, "--key", "owner secret", "--message", "3")
    assert v["bit_accuracy"] >= 0.85
    assert v["p_value"] < 1e-4
    assert code == (0 if v["detected"] else 1)
    if v["detected"]:
        assert v["payload"] == 3


def test_wrong_key_is_not_detected_and_reports_no_payload(signed_photo):
    _, dst = signed_photo
    code, v = _verify(dst, "--key", "somebody else")
    assert code == 1 and v["status"] == "not_detected"
    assert v["payload"] is None and v["p_value"] > 1e-4


def test_clean_photo_is_not_detected(signed_photo):
    src, _ = signed_photo
    code, v = _verify(src, "--key", "owner secret", "--message", "3")
    assert code == 1 and not v["detected"] and v["p_value"] > 1e-4


def test_search_undoes_a_small_rotation(signed_photo):
    """A 4° rotation breaks plain decoding; the re-synchronisation search recovers it."""
    import kornia
    import numpy as np

    _, dst = signed_photo
    img = np.asarray(Image.open(dst).convert("RGB"))
    import torch

    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    rotated = kornia.geometry.transform.rotate(x, torch.tensor([4.0])).clamp(0, 1)
    path = dst.with_name("rotated.png")
    Image.fromarray((rotated[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
    _, plain = _verify(path, "--key", "owner secret", "--message", "3")
    _, searched = _verify(path, "--key", "owner secret", "--message", "3", "--search")
    assert searched["extra"]["views"] == 16
    assert searched["bit_accuracy"] >= max(0.8, plain["bit_accuracy"] + 0.1), (plain, searched)


# -- anti_forward (DeepRAFT rs_aug) ------------------------------------------------------
AF_SHIPPED = PRETRAINED_DIR / "anti_forward"


def test_shipped_anti_forward_loads_and_detects_a_stamped_photo(photo):
    """The shipped scanner finds its stamp on real photo crops, not on the originals."""
    import torch

    from neuralmark.components.metrics import psnr

    for name in ("config.json", "weights.safetensors", "state.json", "MODEL_CARD.md"):
        assert (AF_SHIPPED / name).is_file(), f"missing {name} in {AF_SHIPPED}"
    assert (AF_SHIPPED / "weights.safetensors").stat().st_size < 5 * 2**20
    card = (AF_SHIPPED / "MODEL_CARD.md").read_text()
    for needle in ("## Training", "PSNR", "FPR", "| jpeg_50 |", "Clopper"):
        assert needle in card, f"model card lacks {needle!r}"
    torch.set_num_threads(1)
    method = load_bundle(AF_SHIPPED)
    assert method.key == "anti_forward" and method.config.variant == "rs_aug"
    assert len(method.calibration["clean_statistics"]) >= 1000
    crops = torch.stack([torch.from_numpy(photo[y:y + 256, x:x + 256]).permute(2, 0, 1)
                         for y, x in ((0, 128), (200, 200), (256, 0))]).float() / 255
    stamped = method.stamp(crops)
    assert stamped.shape == crops.shape
    assert float(psnr(stamped, crops).min()) > 25.0
    found = method.verify(stamped)
    assert sum(v.detected for v in found) >= 2, [v.reason for v in found]
    assert all(v.certified_radius > 0 for v in found if v.detected)
    assert not any(v.detected for v in method.verify(crops))


# -- output_mark (seed 001): the protected derain demo service -----------------------------
OM_SHIPPED = PRETRAINED_DIR / "output_mark"
OM_KEY = "neuralmark-demo"


@pytest.fixture(scope="module")
def om_outputs(tmp_path_factory) -> dict[str, Path]:
    """Folders of PNG outputs for rainy crops of `coffee` (a test photo of the shipped
    model's split) at its working size, 32²: the marked service's (H ∘ M) and the plain
    model M's. (Other sizes: ``test_shipped_output_mark_reads_the_service_at_other_sizes``.)"""
    import torch
    from skimage import data

    from neuralmark.components.data.pairs import build_pairs
    from neuralmark.components.imageio import save_image
    from neuralmark.components.methods.base import resize_square

    torch.set_num_threads(1)
    method = load_bundle(OM_SHIPPED)
    photo = torch.from_numpy(data.coffee()).permute(2, 0, 1).float() / 255        # 3 400 600
    crops = torch.stack([photo[:, y:y + 64, x:x + 64] for y in (40, 160, 280)
                         for x in (60, 220, 380, 520)])                           # 12 3 64 64
    rainy, _ = build_pairs(crops, "derain", 5)
    rainy = resize_square(rainy, method.config.working_size)                     # 12 3 32 32
    with torch.no_grad():
        outputs = {"marked": method.marked_model()(rainy), "plain": method.M(rainy).clamp(0, 1)}
    root = tmp_path_factory.mktemp("om_shipped")
    folders = {}
    for name, batch in outputs.items():
        folders[name] = root / name
        folders[name].mkdir()
        for i, image in enumerate(batch):
            save_image(image[None], folders[name] / f"{i:02d}.png")
    return folders


def test_shipped_output_mark_is_complete_small_and_documented():
    from neuralmark.components.methods.base import WatermarkKey

    for name in ("config.json", "weights.safetensors", "state.json", "MODEL_CARD.md"):
        assert (OM_SHIPPED / name).is_file(), f"missing {name} in {OM_SHIPPED}"
    assert (OM_SHIPPED / "weights.safetensors").stat().st_size < 5 * 2**20
    card = (OM_SHIPPED / "MODEL_CARD.md").read_text()
    for needle in ("## Training", "Command", "PSNR", "FPR", OM_KEY, "surrogate_res16_l2",
                   "independently trained model"):
        assert needle in card, f"model card lacks {needle!r}"
    method = load_bundle(OM_SHIPPED)
    assert method.key == "output_mark" and method.config.task == "derain" and method.trained
    assert method.reference_logo(WatermarkKey(OM_KEY))[1]  # the bundle holds the demo key's δ
    assert len(method.null_scores) >= 100 and method.per_image_fpr() < 0.05


@pytest.mark.parametrize("size", [64, 128])
def test_shipped_output_mark_reads_the_service_at_other_sizes(size):
    """The service at 64² and 128² (H at 32², its residual upsampled; trained with that
    resize round trip), saved to 8 bits: the marked outputs read, the plain ones do not.
    (The model trained without the round trip read 1 and 3 of these 12.)"""
    import torch
    from skimage import data

    from neuralmark.components.data.pairs import build_pairs
    from neuralmark.components.methods.base import WatermarkKey, resize_square

    torch.set_num_threads(1)
    method = load_bundle(OM_SHIPPED)
    photo = torch.from_numpy(data.coffee()).permute(2, 0, 1).float() / 255        # 3 400 600
    crops = torch.stack([photo[:, y:y + 128, x:x + 128] for y in (20, 140, 260)
                         for x in (20, 170, 320, 460)])                           # 12 3 128 128
    rainy, _ = build_pairs(resize_square(crops, size), "derain", 5)                # 12 3 s s
    with torch.no_grad():
        marked = method.marked_model()(rainy)
        plain = method.M(rainy).clamp(0, 1)
    key = WatermarkKey(OM_KEY)
    read = [method.hits((x * 255).round() / 255, key)[1] for x in (marked, plain)]
    assert marked.shape[-1] == size and int(read[0].sum()) >= 10, read[0]   # of 12
    assert int(read[1].sum()) == 0, read[1]


def test_shipped_output_mark_extract_without_bundle(om_outputs, tmp_path):
    runner = CliRunner()
    verdicts = {}
    for name in ("marked", "plain"):
        codes = []
        for path in sorted(om_outputs[name].glob("*.png")):
            result = runner.invoke(app, ["extract", str(path), "--key", OM_KEY, "--json",
                                         "--out", str(tmp_path / f"{name}{path.name}")])
            record = json.loads(result.stdout)
            assert result.exit_code == (0 if record["detected"] else 1), result.output
            codes.append(result.exit_code)
        verdicts[name] = codes
    assert verdicts["marked"].count(0) >= 10, verdicts   # of 12 marked outputs
    assert verdicts["plain"].count(0) == 0, verdicts     # no clean output flagged


def test_shipped_output_mark_audit_without_bundle(om_outputs, tmp_path):
    runner = CliRunner()
    for name, expected in (("marked", 0), ("plain", 1)):
        result = runner.invoke(app, ["audit", "--suspect-outputs", str(om_outputs[name]),
                                     "--key", OM_KEY, "--report", str(tmp_path / name),
                                     "--json"])
        record = json.loads(result.stdout)
        assert result.exit_code == expected, (name, record["reason"])
        assert (tmp_path / name / "verdict.md").is_file()


def test_shipped_visible_gan_is_trained_with_the_scripts_recipe():
    """The shipped W is the script's recipe (not an older one) and its card is the script's."""
    from tests.script_modules import load_script

    script = load_script("train_shipped_visible_gan")
    shipped = PRETRAINED_DIR / "visible_gan"
    config = json.loads((shipped / "config.json").read_text())
    stale = {k: (config.get(k), v) for k, v in script.RECIPE.items() if config.get(k) != v}
    assert not stale, f"shipped W predates RECIPE (shipped, recipe): {stale}"
    metrics = json.loads((shipped / "metrics.json").read_text())
    assert metrics["profile"] == "shipped"
    assert {k: v for k, v in metrics["recipe"].items() if k != "device"} == script.RECIPE
    assert metrics["final_training"]["steps_done"] == script.RECIPE["steps"]
    card = (shipped / "MODEL_CARD.md").read_text()
    assert "predates" not in card
    assert f"{metrics['fit_seconds']:.0f} s wall" in card
    assert (shipped / "weights.safetensors").stat().st_size < 5 * 2**20
    method = load_bundle(shipped)
    assert method.key == "visible_gan" and method.config.removal_warmup_steps == 1200

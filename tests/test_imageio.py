"""Image I/O: every conversion reported, every failure named, writes atomic."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from neuralmark.components.imageio import (
    ImageReadError,
    LoadedImage,
    iter_images,
    load_image,
    output_format,
    save_image,
)
from neuralmark.components.methods.base import InputError


@pytest.fixture()
def crop(photo) -> np.ndarray:
    """A 96×128 RGB crop of a real photo (H×W×3 uint8)."""
    return np.ascontiguousarray(photo[100:196, 150:278])


def _write_png16(path: Path, arr: np.ndarray) -> None:
    """Write an H×W×3 (RGB) or H×W×2 (gray + alpha) uint16 array as a 16-bit PNG.

    PIL cannot write these; it reads them back reduced to 8 bits a channel.
    """
    h, w, channels = arr.shape
    colour_type = {3: 2, 2: 4}[channels]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# -- loading: modes and notes ----------------------------------------------------------------


def test_rgb_png_loads_exactly_without_notes(tmp_path, crop):
    path = tmp_path / "photo.png"
    Image.fromarray(crop).save(path)
    img = load_image(path)
    assert isinstance(img, LoadedImage)
    assert img.tensor.shape == (1, 3, 96, 128) and img.tensor.dtype == torch.float32
    expected = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(img.tensor, expected)
    assert (img.mode, img.bit_depth, img.format) == ("RGB", 8, "PNG")
    assert img.alpha is None and img.notes == []
    assert img.size == (128, 96)


def test_grayscale_is_converted_with_a_note(tmp_path, crop):
    path = tmp_path / "gray.png"
    gray = Image.fromarray(crop).convert("L")
    gray.save(path)
    img = load_image(path)
    assert img.mode == "L"
    assert any("grayscale (L) converted to RGB" in n for n in img.notes)
    # all three channels carry the gray values
    g = torch.from_numpy(np.array(gray)).float() / 255
    for c in range(3):
        assert torch.equal(img.tensor[0, c], g)


def test_rgba_keeps_alpha_aside(tmp_path, crop):
    alpha = np.tile(np.linspace(0, 255, 128, dtype=np.uint8), (96, 1))
    path = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([crop, alpha])).save(path)
    img = load_image(path)
    assert img.mode == "RGBA"
    assert img.alpha is not None and img.alpha.shape == (1, 1, 96, 128)
    assert torch.equal(img.alpha[0, 0], torch.from_numpy(alpha).float() / 255)
    # colour is not premultiplied or otherwise touched by the alpha
    assert torch.equal(img.tensor, torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255)
    assert "RGBA: alpha kept aside and restored on save" in img.notes


def test_la_gives_gray_rgb_and_alpha(tmp_path, crop):
    gray = np.asarray(Image.fromarray(crop).convert("L"))
    path = tmp_path / "la.png"
    Image.fromarray(np.dstack([gray, np.full_like(gray, 128)])).save(path)
    img = load_image(path)
    assert img.mode == "LA"
    assert img.alpha is not None
    assert torch.allclose(img.alpha, torch.full_like(img.alpha, 128 / 255))
    assert any("grayscale (LA)" in n for n in img.notes)
    assert torch.equal(img.tensor[0, 0], img.tensor[0, 2])


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_image_converted(tmp_path, crop, transparent):
    pal = Image.fromarray(crop).quantize(colors=32)
    path = tmp_path / "pal.png"
    if transparent:
        pal.save(path, transparency=0)
    else:
        pal.save(path)
    img = load_image(path)
    assert img.mode == "P"
    assert "palette image converted to RGB" in img.notes
    expected = torch.from_numpy(np.array(pal.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(img.tensor, expected)
    assert (img.alpha is not None) == transparent
    if transparent:
        index = np.asarray(pal)
        assert torch.equal(img.alpha[0, 0] == 0, torch.from_numpy(index == 0))


def test_sixteen_bit_grayscale_keeps_its_precision(tmp_path):
    ramp = (np.arange(96 * 128, dtype=np.uint32).reshape(96, 128) * 5).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    img = load_image(path)
    assert img.mode.startswith("I;16") and img.bit_depth == 16
    assert any("16-bit grayscale" in n and "[0, 1]" in n for n in img.notes)
    expected = torch.from_numpy(ramp.astype(np.float32) / 65535)
    assert torch.allclose(img.tensor[0, 1], expected, atol=1e-7)
    # finer than 8 bits: neighbouring values stay distinct
    assert img.tensor[0, 0, 0, 1] > img.tensor[0, 0, 0, 0]


def test_sixteen_bit_colour_png_reports_reduction(tmp_path, crop):
    path = tmp_path / "rgb48.png"
    _write_png16(path, crop.astype(np.uint16) * 257)
    img = load_image(path)
    assert img.bit_depth == 16
    assert "16-bit PNG reduced to 8-bit by the decoder (stored as RGB;16B)" in img.notes
    assert torch.equal(img.tensor, torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255)


def test_sixteen_bit_gray_alpha_png(tmp_path, crop):
    gray = crop[..., 1].astype(np.uint16) * 257
    path = tmp_path / "la32.png"
    _write_png16(path, np.dstack([gray, np.full_like(gray, 65535)]))
    img = load_image(path)
    assert img.mode == "RGBA" and img.bit_depth == 16  # PIL widens 16-bit LA to RGBA
    assert "16-bit PNG reduced to 8-bit by the decoder (stored as LA;16B)" in img.notes
    assert img.alpha is not None and torch.all(img.alpha == 1)
    assert torch.equal(img.tensor[0, 0], torch.from_numpy(crop[..., 1]).float() / 255)


def test_int32_and_float_images_are_scaled(tmp_path):
    ints = np.arange(96 * 128, dtype=np.int32).reshape(96, 128) * 3  # up to ~36 900
    path_i = tmp_path / "ints.tif"
    Image.fromarray(ints).save(path_i)
    img = load_image(path_i)
    assert img.mode == "I" and img.bit_depth == 16
    assert torch.allclose(img.tensor[0, 0], torch.from_numpy(ints / 65535).float())
    assert any("(I) read as 16-bit" in n for n in img.notes)

    floats = np.linspace(0, 255, 96 * 128, dtype=np.float32).reshape(96, 128)
    path_f = tmp_path / "floats.tif"
    Image.fromarray(floats).save(path_f)
    img = load_image(path_f)
    assert img.mode == "F"
    assert 0.0 <= img.tensor.min() and img.tensor.max() <= 1.0
    assert torch.allclose(img.tensor[0, 2], torch.from_numpy(floats / 255))
    assert any("(F) with range 0..255 scaled" in n for n in img.notes)


@pytest.mark.parametrize("ext", ["jpg", "tif"])
def test_cmyk_converted_with_a_note(tmp_path, crop, ext):
    path = tmp_path / f"print.{ext}"
    Image.fromarray(crop).convert("CMYK").save(path)
    img = load_image(path)
    assert img.mode == "CMYK"
    assert any(n.startswith("CMYK converted to RGB") for n in img.notes)
    assert img.tensor.shape == (1, 3, 96, 128)
    # the colours survive (JPEG adds a little error)
    ref = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    assert (img.tensor - ref).abs().mean() < 0.05


def test_exif_orientation_applied(tmp_path, crop):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display = rotate 90° clockwise
    Image.fromarray(crop).save(path, exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (96, 128)  # width and height swapped
    assert any(n.startswith("EXIF orientation applied") for n in img.notes)


def test_animated_gif_uses_first_frame(tmp_path, crop):
    first = Image.fromarray(crop)
    second = Image.fromarray(255 - crop)
    path = tmp_path / "anim.gif"
    first.save(path, save_all=True, append_images=[second], duration=100)
    img = load_image(path)
    assert any("animated image (2 frames): only the first frame is used" in n for n in img.notes)
    with Image.open(path) as im:
        expected = np.array(im.convert("RGB"))
    assert torch.equal(img.tensor, torch.from_numpy(expected).permute(2, 0, 1)[None].float() / 255)


# -- loading: failures name the file and the problem -----------------------------------------


def _png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_files_are_reported(tmp_path, crop, fmt, ext):
    data = _png_bytes(crop, fmt)
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=rf"cut\.{ext} is corrupt or truncated"):
        load_image(path)


def test_truncated_file_fails_even_if_pil_was_told_to_accept_truncation(tmp_path, crop):
    data = _png_bytes(crop, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageReadError, match="truncated"):
            load_image(path)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def test_text_file_renamed_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageReadError, match="notes.png is not an image file PIL can read"):
        load_image(path)


def test_text_file(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("hello")
    with pytest.raises(ImageReadError, match="x.txt is not an image file PIL can read"):
        load_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageReadError, match=r"empty\.png is empty \(0 bytes\)"):
        load_image(path)


def test_directory_and_missing_file(tmp_path):
    folder = tmp_path / "album.png"
    folder.mkdir()
    with pytest.raises(ImageReadError, match="album.png is a directory"):
        load_image(folder)
    with pytest.raises(ImageReadError, match="ghost.png: no such file"):
        load_image(tmp_path / "ghost.png")


def test_too_small_image(tmp_path, crop):
    path = tmp_path / "tiny.png"
    Image.fromarray(crop[:50, :40]).save(path)
    message = r"tiny\.png is 40×50 px; needs at least 64 px on each side"
    with pytest.raises(ImageReadError, match=message):
        load_image(path)
    assert load_image(path, min_size=32).size == (40, 50)


def test_too_many_pixels_checked_from_header(tmp_path, crop):
    path = tmp_path / "big.png"
    Image.fromarray(crop).save(path)
    message = r"big\.png is 128×96 px = 12,288 pixels; the limit is 10,000"
    with pytest.raises(ImageReadError, match=message):
        load_image(path, max_pixels=10_000)


def test_pil_decompression_bomb_is_an_image_read_error(tmp_path):
    # a 1-bit PNG whose header claims > 2× PIL's limit: PIL refuses at open
    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 10_000)).save(path)
    with pytest.raises(ImageReadError, match="bomb.png"):
        load_image(path, max_pixels=10**12)


def test_read_errors_are_input_errors():
    assert issubclass(ImageReadError, InputError)


# -- saving ----------------------------------------------------------------------------------


def test_png_round_trip_is_exact(tmp_path, crop):
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    path = tmp_path / "out" / "copy.png"
    notes = save_image(x, path)
    assert notes == []
    assert torch.equal(load_image(path).tensor, x)


def test_alpha_restored_from_like(tmp_path, crop):
    alpha = np.tile(np.linspace(0, 255, 128, dtype=np.uint8), (96, 1))
    src = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([crop, alpha])).save(src)
    loaded = load_image(src)
    out = tmp_path / "marked.png"
    notes = save_image(loaded.tensor, out, like=loaded)
    assert "alpha restored" in notes
    with Image.open(out) as im:
        assert im.mode == "RGBA"
        assert np.array_equal(np.asarray(im)[..., 3], alpha)


def test_jpeg_output_warns_and_drops_alpha(tmp_path, crop):
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    notes = save_image(x, tmp_path / "a.jpg", alpha=torch.ones(1, 1, 96, 128), quality=90)
    assert any("JPEG output re-compresses the image (quality 90)" in n
               and "attack on the mark" in n for n in notes)
    assert "alpha channel dropped: JPEG has no transparency" in notes
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB"


def test_sixteen_bit_source_noted_on_save(tmp_path):
    ramp = (np.arange(96 * 128, dtype=np.uint32).reshape(96, 128) * 5).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    loaded = load_image(tmp_path / "deep.png")
    notes = save_image(loaded.tensor, tmp_path / "out.tif", like=loaded)
    assert "16-bit source written as 8-bit per channel" in notes
    assert load_image(tmp_path / "out.tif").format == "TIFF"


@pytest.mark.parametrize("ext,fmt", [("png", "PNG"), ("JPEG", "JPEG"), ("webp", "WEBP"),
                                     ("tiff", "TIFF"), ("bmp", "BMP")])
def test_format_from_extension(tmp_path, crop, ext, fmt):
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    save_image(x, tmp_path / f"o.{ext}")
    with Image.open(tmp_path / f"o.{ext}") as im:
        assert im.format == fmt
    assert output_format(f"o.{ext}") == fmt


def test_unknown_extension_raises_before_any_work(tmp_path):
    target = tmp_path / "new_folder" / "out.xyz"
    bad_tensor = torch.zeros(2, 5)  # would fail validation if it were looked at
    with pytest.raises(InputError, match=r"out\.xyz: unknown output extension \.xyz"):
        save_image(bad_tensor, target)
    assert not target.parent.exists()


def test_bad_tensor_rejected(tmp_path):
    with pytest.raises(InputError, match="B×3×H×W"):
        save_image(torch.zeros(1, 1, 8, 8), tmp_path / "a.png")
    with pytest.raises(InputError, match="one image"):
        save_image(torch.zeros(2, 3, 8, 8), tmp_path / "a.png")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        save_image(torch.full((1, 3, 8, 8), 2.0), tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, crop, monkeypatch):
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    existing = tmp_path / "keep.png"
    existing.write_bytes(b"original content")
    fresh = tmp_path / "fresh.png"
    real_save = Image.Image.save

    def exploding_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # bytes reach the temporary file ...
        raise OSError("disk full (simulated)")  # ... then the write fails

    monkeypatch.setattr(Image.Image, "save", exploding_save)
    for target in (existing, fresh):
        with pytest.raises(OSError, match="disk full"):
            save_image(x, target)
    assert existing.read_bytes() == b"original content"
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]  # no temp files left


def test_successful_overwrite_replaces_the_file(tmp_path, crop):
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    target = tmp_path / "o.png"
    target.write_bytes(b"old")
    save_image(x, target)
    assert torch.equal(load_image(target).tensor, x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


# -- listing ---------------------------------------------------------------------------------


def test_iter_images(tmp_path):
    for name in ["b.PNG", "a.jpg", "notes.txt", ".hidden.png", "sub/c.webp", ".cache/d.png"]:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert [p.name for p in iter_images(tmp_path)] == ["a.jpg", "b.PNG"]
    assert [p.relative_to(tmp_path).as_posix() for p in iter_images(tmp_path, recursive=True)] \
        == ["a.jpg", "b.PNG", "sub/c.webp"]
    assert list(iter_images(tmp_path / "notes.txt")) == [tmp_path / "notes.txt"]
    with pytest.raises(ImageReadError, match="nowhere: no such file or folder"):
        list(iter_images(tmp_path / "nowhere"))

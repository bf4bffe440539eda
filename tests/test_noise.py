"""``components/noise.band_noise``: the one narrow-band noise generator of trigger_key's
``band`` key family and of the keyless ``fine_tune_noise`` attack."""

from __future__ import annotations

import pytest
import torch

from neuralmark.components.attacks.noise_inputs import noise_images
from neuralmark.components.errors import InputError
from neuralmark.components.methods.trigger_key import trigger
from neuralmark.components.noise import band_noise


def _peak(img: torch.Tensor) -> tuple[float, float]:
    """The (f_y, f_x) of the strongest non-DC Fourier coefficient of an S×S image, folded
    to f_x ≥ 0 (a real image's spectrum is symmetric)."""
    s = img.shape[-1]
    power = torch.fft.fft2(img - img.mean()).abs()
    power[0, 0] = 0
    i, j = divmod(int(power.argmax()), s)
    f = torch.fft.fftfreq(s)
    fy, fx = float(f[i]), float(f[j])
    return (-fy, -fx) if fx < 0 or (fx == 0 and fy < 0) else (fy, fx)


def test_each_image_is_noise_around_its_own_frequency():
    freqs = torch.tensor([[0.0, 0.25], [0.25, 0.0], [0.125, 0.125], [0.0, 0.0625]])
    x = band_noise(freqs, 64, 3, torch.Generator().manual_seed(0), width=0.01)
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.allclose(x.std(dim=(-2, -1)), torch.full((4, 3), 0.2), rtol=0.1)
    for i, (fy, fx) in enumerate(freqs.tolist()):
        for c in range(3):
            py, px = _peak(x[i, c])
            assert abs(py - fy) <= 2 / 64 and abs(px - fx) <= 2 / 64, (i, c, py, px)


def test_one_width_per_image_and_the_same_draw_for_the_same_state():
    freqs = torch.tensor([[0.0, 0.3], [0.0, 0.3]])
    x = band_noise(freqs, 48, 1, torch.Generator().manual_seed(1), width=torch.tensor([0.01, 0.1]))

    def top_share(img: torch.Tensor) -> float:  # power in the 8 strongest coefficients
        p = torch.fft.fft2(img - img.mean()).abs().flatten() ** 2
        return float(p.topk(8).values.sum() / p.sum())

    assert top_share(x[0, 0]) > 2 * top_share(x[1, 0])  # the narrow window concentrates
    again = band_noise(
        freqs, 48, 1, torch.Generator().manual_seed(1), width=torch.tensor([0.01, 0.1])
    )
    assert torch.equal(x, again)


def test_trigger_key_band_noise_is_one_image_of_it():
    """trigger_key's band K and the attack's band images are the same generator (the attack
    draws its frequencies, widths and noise from one stream)."""
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    one = trigger.band_noise((0.1, -0.2), 40, 3, g1, width=0.03, amplitude=0.2)
    exact = torch.tensor([[0.1, -0.2]], dtype=torch.float64)  # float32 would round ω
    assert torch.equal(one, band_noise(exact, 40, 3, g2)[0])
    k = trigger.band_trigger("a", 40, 1)
    assert k.shape == (1, 40, 40)
    omega = torch.tensor([trigger.band_frequency("a")], dtype=torch.float64)
    assert torch.equal(k, band_noise(omega, 40, 1, trigger.keyed_generator("a", "band/trigger"))[0])
    band_kind = noise_images(3, 1, 32, torch.Generator().manual_seed(2), kinds=("band",))
    assert band_kind.shape == (3, 1, 32, 32)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((torch.zeros(2, 3), 8, 1), {}, "frequencies must be N×2"),
        ((torch.zeros(0, 2), 8, 1), {}, "frequencies must be N×2"),
        ((torch.zeros(1, 2), 0, 1), {}, "need size >= 1 and channels >= 1"),
        ((torch.zeros(1, 2), 8, 0), {}, "need size >= 1 and channels >= 1"),
        ((torch.zeros(2, 2), 8, 1), {"width": 0.0}, "width must be positive"),
        ((torch.zeros(2, 2), 8, 1), {"width": torch.tensor([0.1, 0.1, 0.1])}, "one per image"),
        ((torch.zeros(2, 2), 8, 1), {"width": torch.tensor([0.1, -0.1])}, "width must be positive"),
        ((torch.zeros(1, 2), 8, 1), {"amplitude": -0.1}, "amplitude must be >= 0"),
    ],
)
def test_bad_inputs_are_named(args, kwargs, message):
    with pytest.raises(InputError, match=message):
        band_noise(*args, torch.Generator().manual_seed(0), **kwargs)

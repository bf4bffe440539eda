"""Cost of building one keyed ``pgd_signer`` decoder, and whether the fast path changes it.

FPR calibration builds one keyed decoder per random key (``null_p_values``). The whitening
set is stored at the decoder's input size (working size / ``input_stride``). Three builds:

* ``old``: what ``decoder_for`` did before: per key, the set up-sampled to the working size,
  then ``pooled`` down-samples it again;
* ``direct``: the stored views fed to ``pooled_input`` as they are (no round trip);
* ``new``: what ``decoder_for`` does now: the round trip made once per method
  (``WhiteningSet.decoder_input``), its result fed to ``pooled_input`` for every key.

Timed on the shipped bundle; each build is compared with ``old``: whitening (relative
Frobenius difference of ``feat_whiten``, max difference of ``feat_mean``), keyed logits on
five scikit-image photos (not the whitening set), and whether photos signed against the
``old`` decoder verify under the other one.

Usage (prints figures; no timing is asserted anywhere)::

    OMP_NUM_THREADS=1 python scripts/benchmark_pgd_signer_keying.py [--keys 10] [--signed 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from neuralmark.components.methods import load_bundle
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.pgd_signer import keyed_decoder

SHIPPED = Path(__file__).resolve().parents[1] / "components" / "pretrained" / "pgd_signer"


@torch.no_grad()
def old_path(method, secret: str):  # noqa: ANN001, ANN201
    """The build before the fast path: views up-sampled to the working size, then ``pooled``."""
    decoder = keyed_decoder(method.decoder, secret, None, method.config.keyed_layers)
    views = method.whitening_set.as_float(method.config.working_size)
    decoder.fit_whitening(torch.cat([decoder.pooled(views[i:i + 64])
                                     for i in range(0, views.shape[0], 64)]))
    return decoder


def direct_path(method, secret: str):  # noqa: ANN001, ANN201
    """The stored views fed to ``pooled_input`` as they are (no up/down round trip)."""
    return keyed_decoder(method.decoder, secret, method.whitening_set.images.float() / 255,
                         method.config.keyed_layers)


def new_path(method, secret: str):  # noqa: ANN001, ANN201
    """The build ``decoder_for`` does now (the views made once: ``whitening_views``)."""
    return keyed_decoder(method.decoder, secret, method.whitening_views(),
                         method.config.keyed_layers)


def photos(n: int) -> torch.Tensor:
    """``n`` 256² crops of scikit-image's shipped photographs (not the whitening set)."""
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")[:n]:
        img = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255
        out.append(torch.nn.functional.interpolate(img[None], size=(256, 256), mode="bilinear",
                                                   antialias=True)[0])
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--signed", type=int, default=2, help="photos signed per key (0: skip)")
    ap.add_argument("--sign-keys", type=int, default=2, help="keys used for the signed check")
    ap.add_argument("--bundle", type=Path, default=SHIPPED)
    args = ap.parse_args()
    torch.set_num_threads(1)
    method = load_bundle(args.bundle)
    print(f"bundle {args.bundle}: working {method.config.working_size}, stride "
          f"{method.config.input_stride}, whitening set {tuple(method.whitening_set.images.shape)}")
    secrets = [f"bench-key-{i}" for i in range(args.keys)]
    t0 = time.perf_counter()
    method.whitening_views()
    print(f"new: the views made once per method in {1e3 * (time.perf_counter() - t0):.0f} ms")
    paths = {"old": old_path, "direct": direct_path, "new": new_path}
    for build in paths.values():
        build(method, "warm-up")
    x = method._to_working(photos(5))
    times: dict[str, list[float]] = {name: [] for name in paths}
    diffs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in paths}
    for s in secrets:
        built = {}
        for name, build in paths.items():
            t0 = time.perf_counter()
            built[name] = build(method, s)
            times[name].append(time.perf_counter() - t0)
        a = built["old"]
        with torch.no_grad():
            la = a(x)
            for name, b in built.items():
                diffs[name].append((
                    float((a.feat_whiten - b.feat_whiten).norm() / a.feat_whiten.norm()),
                    float((a.feat_mean - b.feat_mean).abs().max()),
                    float((la - b(x)).abs().mean() / la.abs().mean())))
    for name in paths:
        t, d = times[name], diffs[name]
        print(f"{name:6s} build per key: median {1e3 * statistics.median(t):.0f} ms "
              f"(min {1e3 * min(t):.0f}) over {args.keys} keys; vs old: |dW|/|W| max "
              f"{max(r[0] for r in d):.3g}, |dmu| max {max(r[1] for r in d):.3g}, "
              f"logits mean|dl|/mean|l| max {max(r[2] for r in d):.3g}")
    if args.signed:
        # sign against the old-path decoder (what a mark made before this change used) and
        # verify under the new-path one
        for s in secrets[:args.sign_keys]:
            key = WatermarkKey(s, 0)
            method._keyed.clear()
            method._keyed[s] = old_path(method, s)
            signed = method.embed(x[:args.signed], key)
            v_old = method.verify(signed, key)
            for name in ("direct", "new"):
                method._keyed[s] = paths[name](method, s)
                v_new = method.verify(signed, key)
                for i, (vo, vn) in enumerate(zip(v_old, v_new, strict=True)):
                    print(f"key {s} photo {i}: old verify {vo.bit_accuracy:.3f} "
                          f"(p={vo.p_value:.2g}, {vo.detected}); {name} verify "
                          f"{vn.bit_accuracy:.3f} (p={vn.p_value:.2g}, {vn.detected})")


if __name__ == "__main__":
    main()

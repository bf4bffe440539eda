"""Does a fine-tuning-aware embedding keep trigger_key's mark through fine-tuning? (issue #13)

One unmarked host (tiny sizes; data: the tiny pipeline's sample set — ``--sample DIR``
builds it there with the tiny profile's settings, 128², 4 crops per photo, 12 procedural —
or by default the diagnosis script's eight scikit-image photos: six train, two test, grey,
256²) is trained once; then, for every variant given, the owner's key is
embedded with that variant's embedding settings, η is calibrated (random keys, the λ = 0
and an independently trained host, ``--pool`` other keys' marked hosts embedded with the
same settings), and the marked host is attacked with the library's one-epoch fine-tuning
(original and new data: fresh Adam at lr 1e-3, BatchNorm in train mode) and 30 % pruning,
or the ``--attacks`` given (each with its own attacker lr, to see whether an attacker who
keeps the host's task quality removes the mark).
One table row per variant: fidelity cost (vs the same fine-tuning at λ = 0), ℓ_w per
pixel, η, held-out FPR, each attack's d_rel and verdict and the attacked task PSNR
(``--readouts``: also the matched-filter readout, calibrated on the same null trials).

A variant is ``name:field=value,field=value`` over ``TriggerKeyConfig`` fields, e.g.::

    python scripts/measure_trigger_key_finetune_aware.py --arch red --depth 6 \
        plain:lam=1e-2 look4:lam=1e-2,lookahead_steps=4
    # attack-aware (issue #13): new-data fine-tuning and overwriting simulated, every 8 steps
    python scripts/measure_trigger_key_finetune_aware.py --arch dncnn --depth 5 \
        --attacks fine_tune_new:1,overwrite,fine_tune_original:1,prune:0.3 plain:lam=1e-2 \
        aware:lam=1e-2,lookahead_steps=32,lookahead_every=8,lookahead_attacks=new+overwrite
    # the keyless noise fine-tuning (issue #13, tk11) against the η tk9 calibrated
    python scripts/measure_trigger_key_finetune_aware.py --arch dncnn --depth 5 \
        --attacks fine_tune_noise:1,fine_tune_noise:4 --eta filter=0.8116,band=0.644 \
        filter:lam=1e-2 band:lam=1e-2,key_family=band
    # key families (issue #13, tk9): overwriting also with other attacker secrets
    python scripts/measure_trigger_key_finetune_aware.py --arch dncnn --depth 5 --pool 8 \
        --attacks overwrite,fine_tune_original:1,fine_tune_new:1 \
        --overwrite-secrets neuralmark-attacker-2 filter:lam=1e-2 band:lam=1e-2,key_family=band
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from neuralmark.components.attacks.model_registry import (  # noqa: E402
    ModelAttackSettings,
    get_model_attack,
)
from neuralmark.components.errors import InputError  # noqa: E402
from neuralmark.components.methods.base import WatermarkKey  # noqa: E402
from neuralmark.components.methods.registry import build  # noqa: E402
from neuralmark.components.methods.trigger_key import calibration  # noqa: E402
from neuralmark.components.methods.trigger_key.evaluation import (  # noqa: E402
    attacker_data,
    overwrite_embed,
)
from neuralmark.components.methods.trigger_key.study import skimage_images  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "page", "text")
ATTACKS = "fine_tune_original:1,fine_tune_new:1,fine_tune_original:3,prune:0.3"


def parse_attacks(text: str) -> list[tuple[str, float | None, float | None]]:
    """``name[:strength[:lr]],…`` → ``[(name, strength or None, attacker lr or None), …]``
    (``overwrite`` takes no strength)."""
    out = []
    for item in filter(None, text.split(",")):
        name, *rest = item.split(":")
        strength = float(rest[0]) if rest and rest[0] else None
        out.append((name, strength, float(rest[1]) if len(rest) > 1 else None))
    return out


def parse_etas(text: str) -> dict[str, float]:
    """``variant=η,…`` → ``{variant: η}``; ``SystemExit`` naming a malformed item."""
    out = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        try:
            eta = float(value)
        except ValueError:
            eta = float("nan")
        if not sep or not name.strip() or not 0 < eta < 10:
            raise SystemExit(f"--eta: expected variant=η with η in (0, 10), got {item!r}")
        out[name.strip()] = eta
    return out


def parse_variant(text: str) -> tuple[str, dict[str, float | int | str]]:
    """``name:field=value,...`` → ``(name, {field: number})``."""
    name, _, rest = text.partition(":")
    fields = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        fields[k.strip()] = _number_or_text(v.strip())
    return name, fields


def _number_or_text(text: str) -> float | int | str:
    """``200`` → int, ``1e-2`` → float, anything else (``key_noise``) stays text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def cell(m: Any, owner: WatermarkKey, attacked: Any, other: str,
         other_null: list[float], both: bool, eta: float | None = None) -> str:
    """``statistic verdict [/ other readout's statistic verdict] (attacked PSNR)``: the
    configured readout's verdict (``statistic < eta`` when an η is given, tk11's ``--eta``;
    else the calibrated verdict) and, with ``both``, the other readout's against its own
    calibration null ``other_null``."""
    v = m.verify_model(attacked, owner)
    hit = v.extra["statistic"] < eta if eta is not None else v.detected
    text = f"{v.extra['statistic']:.3f} {'yes' if hit else 'no'}"
    if both:
        o = v.extra["d_rel"] if other == "d_rel" else 1 - v.extra["matched"]
        hit = (calibration.p_value(o, other_null) or 1.0) <= m.config.alpha
        text += f" / {o:.3f} {'yes' if hit else 'no'}"
    return text + f" ({m.task_psnr_of(attacked):.2f})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--arch", default="red")
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--pool", type=int, default=4, help="other keys' marked hosts in the null")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sample", help="build / reuse the tiny sample set here and train on it")
    ap.add_argument("--attacks", default=ATTACKS,
                    help="name[:strength[:lr]],… (lr: the attacker's Adam lr; default 1e-3; "
                         "overwrite: no strength)")
    ap.add_argument("--overwrite-secrets", default="",
                    help="secret,…: after --attacks, overwrite once more with each of these "
                         "attacker secrets (the attacker's key family is the variant's; "
                         "FAMILY/secret: that key family's, e.g. filter/neuralmark-attacker)")
    ap.add_argument("--owner", default="neuralmark-eval", help="the owner's secret")
    ap.add_argument("--eta", default="",
                    help="variant=η,…: skip these variants' calibration (no FPR) and judge "
                         "d_rel < η, an η measured on the same host and mark before (tk11)")
    ap.add_argument("--readouts", action="store_true",
                    help="also calibrate the matched-filter readout on the same null trials "
                         "(same hosts, keys, pool) and give each cell both verdicts: "
                         "d_rel / matched (1 − matched against its own η) (issue #13, tk12)")
    args = ap.parse_args(argv)
    etas = parse_etas(args.eta)
    if etas and args.readouts:
        raise SystemExit("--eta skips a variant's calibration, --readouts calibrates both "
                         "readouts on the same null: use one of them")
    secrets = [s for s in args.overwrite_secrets.split(",") if s]
    torch.set_num_threads(args.threads)
    start = time.time()
    base = {"channels": 1, "arch": args.arch, "depth": args.depth, "host_steps": 300,
            "embed_steps": 200, "visualizer_steps": 0, "calibration_keys": 100,
            "calibration_marked_keys": args.pool}
    # each calibrated variant's null (marked, λ = 0 and independent hosts, --pool marked
    # hosts; --readouts: the same trials) must reach alpha: checked before any training
    for text in args.variants:
        name, fields = parse_variant(text)
        if name in etas:
            continue
        vc = build("trigger_key", {**base, **fields}).config
        try:
            calibration.require_null_size(vc.alpha, vc.calibration_keys,
                                          2 + int(vc.lambda0_reference),
                                          vc.calibration_marked_keys, where=f"variant {name}")
        except InputError as err:
            raise SystemExit(str(err)) from None
    host = build("trigger_key", base)
    if args.sample:
        from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset
        from neuralmark.components.methods.trigger_key.study import task_images

        manifest = build_sample_dataset(args.sample, SampleDataConfig(
            size=128, crops_per_photo=4, n_procedural=12))
        fit = host.fit(task_images(manifest))
    else:
        fit = host.fit(skimage_images(PHOTOS, n_train=6))
    names = [parse_variant(v)[0] for v in args.variants]
    # the independent host only serves the calibration, which --eta skips
    independent = (None if all(n in etas for n in names)
                   else host.train_independent_host(1000))
    print(f"host {args.arch}×{args.depth}: noisy {fit['input_psnr']:.2f} dB, unmarked "
          f"{fit['host_psnr']:.2f} dB ({time.time() - start:.0f} s)", flush=True)
    owner = WatermarkKey(args.owner)
    attacks = parse_attacks(args.attacks)
    labels = [get_model_attack(a).label(s) + ("" if lr is None else f"@lr{lr:g}")
              for a, s, lr in attacks] + [f"overwrite[{s}]" for s in secrets]
    readout = "statistic" + (" / other readout's" if args.readouts else "")
    print("| variant | fidelity cost dB | marked PSNR | ℓ_w/px | η | FPR | "
          + " | ".join(f"{lb}: {readout} (PSNR)" for lb in labels) + " | s |", flush=True)
    for text in args.variants:
        t0 = time.time()
        name, fields = parse_variant(text)
        m = host.with_config(**fields)
        m.train_pairs, m.test_pairs = host.train_pairs, host.test_pairs
        m.embed_model(host.unmarked, owner)
        nan = float("nan")
        cal = ({"eta": etas[name], "fpr": nan, "null_min": nan, "null_median": nan,
                "owner_trigger_min": nan} if name in etas else m.calibrate(owner, [independent]))
        eta = etas.get(name)
        n_keys = m.config.calibration_keys
        other = "matched" if m.config.readout == "d_rel" else "d_rel"
        null_o = (m.null_trials(owner, [independent], n_keys, 1, m.pool, other)
                  if args.readouts else None)
        null_o_calib = calibration.calibration_null(null_o, n_keys) if null_o else []
        cal_o = calibration.calibrate(null_o, m.config.alpha, n_keys) if null_o else {}
        data = attacker_data(m)
        cells = []

        for attack, strength, lr in attacks:
            settings = ModelAttackSettings() if lr is None else ModelAttackSettings(lr=lr)
            attacked = get_model_attack(attack)(m.host, strength, data, settings)
            cells.append(cell(m, owner, attacked, other, null_o_calib, null_o is not None, eta))
        for item in secrets:
            family, _, secret = item.rpartition("/")
            am = m
            if family:  # an attacker who embeds with another key family than the owner's
                am = m.with_config(key_family=family)
                am.train_pairs, am.test_pairs = m.train_pairs, m.test_pairs
            over = dataclasses.replace(data, embed=overwrite_embed(am, secret))
            attacked = get_model_attack("overwrite")(m.host, None, over, ModelAttackSettings())
            cells.append(cell(m, owner, attacked, other, null_o_calib, null_o is not None, eta))
        lw = m.metrics["embed_l_w"] / m.s.numel()
        print(f"| {name} | {m.metrics['fidelity_cost_db']:.2f} | {m.task_psnr_of(m.host):.2f} | "
              f"{lw:.4f} | {cal['eta']:.3f} | "
              f"{cal['fpr']:.4f} | " + " | ".join(cells) + f" | {time.time() - t0:.0f} |",
              flush=True)
        # what sets η (the calibration half's smallest trials by kind) and the mark's size
        print(f"    {name}: mark size d(U(K), S) {m.verify_model(m.unmarked, owner).extra['d']:.3e}"
              f"; null min {cal['null_min']:.3f}, median {cal['null_median']:.3f}; owner's K "
              f"on null hosts min {cal['owner_trigger_min']:.3f}; other keys' marked hosts "
              f"min {cal.get('marked_min', float('nan')):.3f}", flush=True)
        if null_o is not None:
            for label, c_ in ((m.config.readout, cal), (other, cal_o)):
                print(f"    {name} readout {label}: η {c_['eta']:.3f}, FPR {c_['fpr']:.4f} "
                      f"({c_['fp']:.0f}/{c_['trials']:.0f}, 95 % CI {c_['fpr_ci_low']:.4f}–"
                      f"{c_['fpr_ci_high']:.4f}); marked-host FPR "
                      f"{c_.get('marked_fpr', float('nan')):.4f}; null min "
                      f"{c_['null_min']:.3f}, marked min {c_.get('marked_min', float('nan')):.3f}",
                      flush=True)
            trials = {m.config.readout: m.null_trials(owner, [independent], n_keys, 1, m.pool,
                                                      m.config.readout)["marked_hosts"],
                      other: null_o["marked_hosts"]}
            for label, vals in trials.items():  # the pool hosts on the owner's (K, S) first
                print(f"    {name} readout {label}: other keys' marked hosts on the owner's "
                      f"key: {' '.join(f'{v:.3f}' for v in vals[:len(m.pool)])}; all "
                      f"{len(vals)} marked-host trials sorted: "
                      f"{' '.join(f'{v:.3f}' for v in sorted(vals)[:8])} …", flush=True)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

"""Train the pgd_signer decoder that ships in ``components/pretrained/pgd_signer``.

Reproducible on a CPU (2 cores): trains at working size 128 with input stride 2
(the decoder sees 64×64), then saves a bundle configured for working size 256
with input stride 4 — the decoder sees the same 64×64 input, so the weights
carry over unchanged while PGD gets 256×256 pixels to write into.

Usage: ``python scripts/train_shipped_pgd_signer.py --rounds 60 --out outputs/pgd_signer_ckpt``
Then ``python scripts/benchmark_pgd_signer.py --bundle ...`` measures it, and
``--install`` copies the bundle + model card into ``components/pretrained/pgd_signer``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


from components.data.manifest import load_split  # noqa: E402
from components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from components.methods import build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--m-steps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "pgd_signer_ckpt")
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ap.add_argument("--data-root", type=Path, default=ROOT / "data" / "sample")
    args = ap.parse_args()

    manifest = build_sample_dataset(args.data_root, SampleDataConfig())
    train = load_split(manifest, "train", size=128)
    val = load_split(manifest, "val", size=128)
    cfg = dict(working_size=128, input_stride=2, width=args.width, rounds=args.rounds,
               batch_size=16, sign_steps_train=10, eot_samples=2, m_steps=args.m_steps,
               lr=1e-3, clean_weight=0.1, buffer_size=1024, pgd_steps=40, curve_images=4,
               rewhiten_every=0)
    method = build("pgd_signer", cfg)
    log = args.out / "train_log.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    class Checkpoint:
        def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
            with log.open("a") as fh:
                fh.write(json.dumps({"round": step, **metrics}) + "\n")
            print(step, {k: round(v, 3) for k, v in metrics.items()}, flush=True)
            if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.rounds:
                save(method, args.out / f"round_{step + 1:04d}", step + 1, time.time() - start)

        def on_figure(self, step: int, name: str, figure) -> None:
            figure.savefig(args.out / f"{name}_{step:04d}.png", dpi=80)

    method.fit({"train": train, "val": val}, [Checkpoint()])


def save(method, directory: Path, rounds: int, seconds: float) -> None:
    """Save the trained decoder as a 256/stride-4 bundle (same decoder input size)."""
    deploy = build("pgd_signer", {**method.config.model_dump(exclude={"method"}),
                                  "working_size": 256, "input_stride": 4})
    deploy.decoder.load_state_dict(method.decoder.state_dict())
    deploy.calibration = {"trained_rounds": rounds, "train_seconds": round(seconds, 1),
                          "trained_at_working_size": 128, "trained_input_stride": 2}
    deploy.to_bundle(directory)


if __name__ == "__main__":
    main()

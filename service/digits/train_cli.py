"""`train-digits` (`python -m service train-digits`, `make train-digits`): the command line over `train`.

It writes the model file and a metrics JSON beside it, by default where the service looks for the
model (`provision.configured_model_path`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.config import Settings
from service.digits.model import DEFAULT_MODEL_PATH
from service.digits.provision import configured_model_path
from service.digits.train import DatasetUnavailable, Progress, TrainConfig, save, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genai-service train-digits",
        description="Train the MLP digit classifier; write the model (.npz) and <name>.metrics.json beside it.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"model file to write (default: GENAI_DIGITS_MODEL_PATH or {DEFAULT_MODEL_PATH})",
    )
    parser.add_argument("--full", action="store_true", help="train on full MNIST from OpenML (60k/10k; needs network)")
    parser.add_argument("--hidden", default=None, help="hidden layer sizes, comma-separated (default 256)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 30)")
    parser.add_argument(
        "--augment", type=int, default=None, help="augmented copies per training digit (default 9; 0 with --full)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for split, augmentation and weights")
    parser.add_argument(
        "--threads", type=int, default=1, help="BLAS threads for training (default 1: fastest on a shared CPU)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the result")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point behind `python -m service train-digits` / `make train-digits ARGS=...`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `make train-digits ARGS="-- --full"` style
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    config = TrainConfig(seed=args.seed, full=args.full, threads=max(1, args.threads))
    if args.full:
        config.augment_copies = 0
        config.epochs = 20
    if args.hidden:
        try:
            config.hidden = tuple(int(h) for h in args.hidden.split(",") if h.strip())
        except ValueError:
            print(f"train-digits: --hidden must be comma-separated integers, got {args.hidden!r}", file=sys.stderr)
            return 2
    if args.epochs is not None:
        config.epochs = args.epochs
    if args.augment is not None:
        config.augment_copies = args.augment
    out: Path = args.out if args.out is not None else configured_model_path(Settings())
    progress: Progress = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    try:
        model, metrics = train(config, progress)
    except DatasetUnavailable as exc:
        print(f"train-digits: {exc}", file=sys.stderr)
        return 2
    mpath = save(model, metrics, out)
    print(
        f"held-out accuracy: {metrics['heldout_accuracy'] * 100:.2f}% "
        f"({metrics['heldout_correct']}/{metrics['heldout_size']} held-out digits; {metrics['training_set']})"
    )
    print(
        f"model: {out} ({out.stat().st_size / 1024:.0f} KiB), metrics: {mpath}, trained in {metrics['train_seconds']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure a trained generator with any metric of the registry (`python -m evaluation.fid` runs this CLI):

    python -m evaluation.fid --checkpoint runs/000-mnist64                       # latest checkpoint, EMA G
    python -m evaluation.fid --checkpoint runs/000-mnist64 --all --metrics clf_fid,coverage
    python -m evaluation.fid --checkpoint runs/000-mnist64/generator.safetensors --metrics clf_fid   # an exported G
    python -m evaluation.fid --checkpoint ckpt.pt --inception-weights weights-inception-2015-12-05-6726825d.pth \\
        --num-samples 10000 --reference-floor --json fid.json --logdir runs/000-mnist64/tensorboard

Metrics (evaluation/registry.py; `--help` lists them): fid, kid, isc, prc (Inception features; offline use needs
--inception-weights), the MNIST classifier's (`python -m evaluation.classifier` trains it once), and for
conditional generators class and cas. FID has a large small-sample bias: compare values only at equal --num-samples against the same reference, next to the
--reference-floor (real images vs the reference at the same count).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import torch

from dcgan.machinery.checkpoint import CheckpointError, list_checkpoints
from dcgan.train.data import DataError
from dcgan.loading import load_generator, resolve_generator_path

from .common import EvaluationError, cache_dir
from .metrics import Result, real_images, real_labels
from .registry import CONDITIONAL, TRAINING_DIGITS, Measurement, help_text, measure, needing, parse_metrics
from .registry import real_vs_real


def checkpoints_to_evaluate(target: str, every: bool) -> list[Path]:
    """The file to evaluate (a run dir means its latest checkpoint), or with --all every checkpoint of a run dir."""
    path = resolve_generator_path(target)  # one-line errors for a missing path or a run dir without checkpoints
    if not every:
        return [path]
    if not Path(target).is_dir():
        raise EvaluationError("--all takes a run directory, not a checkpoint file")
    return list_checkpoints(target)


def evaluate_checkpoint(path: Path, args, metrics: list[str], device: torch.device) -> tuple[list[Result], int]:
    G, config, step = load_generator(path, not args.no_ema, device)
    size, nz = config["data"]["image_size"], config["model"]["nz"]
    root = args.data_root or config["data"]["root"]
    reference = real_images(root, args.reference, size, args.num_samples)
    reference_name = f"mnist-{args.reference}-{size}px-{args.num_samples}"
    # Held-out real digits: the other split, so no image is compared with itself.
    other = "train" if args.reference == "test" else "test"
    subject = Measurement(G, nz, reference, reference_name, args.num_samples, device, args.batch_size, args.seed,
                          Path(args.cache_dir), args.inception_weights, args.classifier_weights)
    if needing(metrics, CONDITIONAL):
        subject.reference_labels = real_labels(root, args.reference, args.num_samples)
    if needing(metrics, TRAINING_DIGITS):
        subject.training_digits = (real_images(root, other, size, args.num_samples),
                                   real_labels(root, other, args.num_samples))
    rows = measure(subject, metrics)
    if args.reference_floor:
        rows += [dataclasses.replace(row, metric=f"floor_{row.metric}") for row in
                 real_vs_real(subject, real_images(root, other, size, args.num_samples), metrics)]
    return rows, step


def format_table(rows: list[Result]) -> str:
    lines = [f"{'metric':<22} {'value':>12} {'samples':>8}  {'reference':<24} {'weights':<40} {'seconds':>8}"]
    for r in rows:
        value = f"{r.value:12.4f}" if r.value is not None else f"{'n/a':>12}"
        lines.append(f"{r.metric:<22} {value} {r.samples:>8}  {r.reference:<24} {r.weights:<40} {r.seconds:8.1f}")
        if r.note:
            lines.append(f"{'':<22} {r.note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="run directory (its latest checkpoint), a ckpt-*.pt file, or an exported generator.pt / "
                             "generator.safetensors (with its run's config.yaml beside it)")
    parser.add_argument("--num-samples", type=int, default=10000, help="generated and reference images (default 10000)")
    parser.add_argument("--reference", choices=("test", "train"), default="test", help="MNIST split to compare with")
    parser.add_argument("--metrics", default="fid,kid,isc", help=f"comma-separated, from: {help_text()}")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator's noise")
    parser.add_argument("--inception-weights", default=None, help="torch-fidelity InceptionV3 weights file (offline)")
    parser.add_argument("--classifier-weights", default=None, help="MNIST classifier weights (default: newest in cache)")
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw/ (default: the run's data.root)")
    parser.add_argument("--cache-dir", default=str(cache_dir() / "fidelity"), help="reference statistics cache")
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    parser.add_argument("--logdir", default=None, help="TensorBoard dir: scalars eval/<metric> at the checkpoint's step")
    parser.add_argument("--all", action="store_true", help="every checkpoint of the run; writes <run>/eval_curve.csv")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw generator instead of its EMA")
    parser.add_argument("--reference-floor", action="store_true", help="also real-vs-reference at the same count")
    args = parser.parse_intermixed_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch_fidelity")
    try:
        if args.num_samples < 2:
            raise EvaluationError(f"--num-samples {args.num_samples}: need at least 2 samples")
        if args.batch_size < 1:
            raise EvaluationError(f"--batch-size {args.batch_size}: must be positive")
        if args.inception_weights and not Path(args.inception_weights).is_file():
            raise EvaluationError(f"--inception-weights {args.inception_weights} does not exist")
        try:
            metrics = parse_metrics(args.metrics)
        except ValueError as exc:
            raise EvaluationError(str(exc)) from None
        device = torch.device(args.device)
        paths = checkpoints_to_evaluate(args.checkpoint, args.all)
        report = []
        writer = None
        if args.logdir:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(args.logdir)
        for path in paths:
            rows, step = evaluate_checkpoint(path, args, metrics, device)
            which = "raw G" if args.no_ema else "EMA G"
            print(f"{path} ({f'step {step}, {which}' if step is not None else 'exported EMA G'})")
            print(format_table(rows))
            report.append({"checkpoint": str(path), "step": step, "ema": not args.no_ema,
                           "results": [r.as_dict() for r in rows]})
            if writer and step is None:
                raise EvaluationError(f"--logdir: {path} is an exported generator, which records no step to log at; "
                                      f"evaluate the run's checkpoint instead")
            if writer:
                for r in rows:
                    if r.value is not None:
                        writer.add_scalar(f"eval/{r.metric}", r.value, global_step=step)
        if writer:
            writer.close()
        if args.all:
            curve = Path(args.checkpoint) / "eval_curve.csv"
            with open(curve, "w", newline="") as fh:
                out = csv.writer(fh)
                out.writerow(["step", "metric", "value", "samples"])
                for entry in report:
                    for r in entry["results"]:
                        out.writerow([entry["step"], r["metric"], r["value"], r["samples"]])
            print(f"curve: {curve}")
        if args.json:
            Path(args.json).write_text(json.dumps(report if args.all else report[0], indent=2))
    except (EvaluationError, CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What an epoch end costs besides training: sample grids, their PNG/TensorBoard writes, a full checkpoint.

    python -m bench.epoch_end --config configs/mnist64.yaml

On a fast GPU an epoch of MNIST takes ~1.3 s of steps, so these fixed costs decide much of the time to quality.
Prints the median seconds of each part over --repeats, and what the training loop itself waits for at an epoch end
(the grid writes run in a background thread: `RunLog.image_grids`).
"""
from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from dcgan.machinery.checkpoint import atomic_save
from dcgan.config import load_config
from dcgan.models import models_for
from dcgan.train.plan import use_cpu
from dcgan.machinery.run_log import grid_labels
from dcgan.machinery.run_log import RunLog, sample_grids


def median_seconds(fn, repeats: int, before=lambda: None) -> float:
    times = []
    for _ in range(repeats):
        before()  # untimed
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mnist64.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.num_samples=64")
    args = parser.parse_intermixed_args()  # options and overrides in any order
    cfg = load_config(args.config, args.overrides)
    folder = Path(tempfile.mkdtemp(prefix="epoch-end-"))
    accelerator = Accelerator(cpu=use_cpu(cfg), log_with="tensorboard", project_dir=str(folder))
    accelerator.init_trackers("tensorboard")
    device = accelerator.device
    G, D = (m.to(device) for m in models_for(cfg))
    ema = copy.deepcopy(G).eval()
    optimizers = [torch.optim.Adam(m.parameters()) for m in (G, D)]
    for model, optimizer in zip((G, D), optimizers):  # Adam's moments exist, as in a real checkpoint
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
    labels, per_row = grid_labels(cfg.train.num_samples, cfg.model.conditional, device)
    noise = torch.randn(len(labels), cfg.model.nz, device=device)
    real = torch.rand(cfg.train.num_samples, 1, cfg.data.image_size, cfg.data.image_size, device=device) * 2 - 1

    in_loop = RunLog(accelerator, folder, background=False)  # how grids were written before the background thread
    log = RunLog(accelerator, folder)
    grids = sample_grids(G, ema, noise, labels, real, per_row)
    state = {"generator": G.state_dict(), "discriminator": D.state_dict(), "ema": ema.state_dict(),
             "opt_g": optimizers[0].state_dict(), "opt_d": optimizers[1].state_dict()}
    checkpoint = folder / "ckpt.pt"

    step = iter(range(10**6))
    rows = {
        "sample grids (G and EMA forward, to the CPU)": lambda: sample_grids(G, ema, noise, labels, real, per_row),
        "grid writes (PNG + TensorBoard), in the loop's thread before": lambda: in_loop.image_grids(grids, next(step)),
        "grid hand-over to the background writer (what the loop waits now)": lambda: log.image_grids(grids, next(step)),
        "checkpoint (models, EMA, optimizers; written and fsynced)": lambda: atomic_save(state, checkpoint),
    }
    print(f"{args.config}: {cfg.data.image_size}px, {cfg.train.num_samples} samples per grid, on {device}")
    for name, fn in rows.items():
        seconds = median_seconds(fn, args.repeats, before=log.wait_for_images)  # a hand-over alone, not its write
        print(f"{seconds:8.3f} s  {name}")
    print(f"checkpoint size {checkpoint.stat().st_size / 2**20:.1f} MiB")
    in_loop.close()
    log.close()
    accelerator.end_training()
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()

"""Training throughput of the real training step (dcgan.train.step.GANStep), in images/s and peak memory.

    python -m bench.throughput --config configs/mnist64.yaml
    python -m bench.throughput --config configs/mnist32.yaml --steps 50 train.mixed_precision=bf16

Images/s counts real images consumed per second, each step doing one D and one G update on the global batch.
Warm-up steps are excluded; the figure is the median over repeats. Data are random tensors already on the
device, as the trainer's are (it indexes one device tensor), so this measures the step itself.
"""
from __future__ import annotations

import argparse
import platform
import statistics

import torch

from bench.harness import Ours, peak_memory, run_cli, timed
from dcgan.config import load_config


def measure(cfg, steps: int, warmup: int, repeats: int) -> dict:
    """The real train_step on device-resident random images (the same runner bench.speed times)."""
    ours = Ours(cfg)
    device = ours.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ours.run(warmup)
    rates = [timed(ours, steps, cfg.train.batch_size, device) for _ in range(repeats)]
    kind, mib = peak_memory(device)
    return {"img_per_s": statistics.median(rates), "rates": rates, "peak_mib": mib, "peak_kind": kind, "device": device}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mnist64.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args()  # options and overrides in any order
    cfg = load_config(args.config, args.overrides)
    result = measure(cfg, args.steps, args.warmup, args.repeats)
    rates = ", ".join(f"{r:.0f}" for r in result["rates"])
    print(f"{args.config} {size_desc(cfg)} on {device_name(result['device'])}: "
          f"{result['img_per_s']:.0f} img/s (median of {rates}), peak {result['peak_kind']} {result['peak_mib']:.0f} MiB")
    return 0


def size_desc(cfg) -> str:
    return (f"[{cfg.data.image_size}px ngf {cfg.model.ngf} ndf {cfg.model.ndf} batch {cfg.train.batch_size} "
            f"precision {cfg.train.mixed_precision}]")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

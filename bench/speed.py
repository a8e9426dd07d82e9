"""Our training step against the canonical DCGAN loop, side by side in one process.

    python -m bench.speed --data-root ../shared/data       # 64x64 model, batch 128, best settings for the device
    python -m bench.speed --precision fp32 --no-channels-last --no-fused  # ours with every speed option off
    python -m bench.speed --batch-size 256 --precision fp16 --no-cuda-graphs   # eager steps on a GPU
    python -m bench.speed --config configs/mnist32.yaml model.ngf=16    # any config override, as for training
    python -m bench.speed --grid --precisions fp32,fp16,bf16 --batch-sizes 128,256   # table: one process per cell

"Reference" is the plain style of PyTorch's examples/dcgan/main.py: a torchvision DataLoader with per-image
Resize/ToTensor/Normalize (2 workers), Sigmoid + BCELoss, fp32, separate real/fake backward passes and .item()
every step; same networks, same batch. "Ours" is the trainer's step (dcgan.train.step.GANStep: one CUDA graph per
step on a single GPU unless --no-cuda-graphs) on device-resident images with the chosen options.
Throughput = real images consumed per second (one D and one G update per batch); warm-up
excluded; rounds alternate ours/reference so machine noise hits both; medians are reported, and the last line
is `ratio ours/reference: N.NN`. FLOP/s counts the convolutions: a step is 3 G forwards + 8 D forwards
(G: forward + backward; D: 2 forwards + backward in the D step, forward + input-gradient backward in the G step).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

import torch

from bench.harness import (Ours, Reference, add_step_arguments, peak_memory, peak_tflops, rounds_steps, run_cli,
                           step_config, timed)
from dcgan.config import ConfigError
from dcgan.models import step_flops

# Option sets of the --grid table: everything off, the cheap switches, and torch.compile on top; on CUDA also
# with the step captured as a CUDA graph (removes the launch overhead of its ~370 small kernels).
# torch.compile on CUDA needs channels_last off (PyTorch issue 171622), hence the fused+compile sets.
GRID_OPTIONS = {"plain": ["--no-channels-last", "--no-fused", "--no-cuda-graphs"],
                "channels_last+fused": ["--no-cuda-graphs"],
                "channels_last+fused+compile": ["--compile", "--no-cuda-graphs"],
                "fused+compile": ["--no-channels-last", "--compile", "--no-cuda-graphs"]}
CUDA_GRID_OPTIONS = {"channels_last+fused+cuda_graphs": [], "fused+compile+cuda_graphs": ["--no-channels-last", "--compile"]}


def grid(args) -> int:
    """One subprocess per cell (Accelerate fixes the precision once per process); ours only."""
    unknown = set(args.grid_options.split(",")) - set(GRID_OPTIONS) - set(CUDA_GRID_OPTIONS)
    if unknown:
        print(f"error: unknown --grid-options {','.join(sorted(unknown))}: choose from "
              f"{', '.join([*GRID_OPTIONS, *CUDA_GRID_OPTIONS])}")
        return 2
    try:
        batches = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise ConfigError(f"--batch-sizes {args.batch_sizes}: give integers separated by commas") from None
    for precision in args.precisions.split(","):  # a mistake fails here, not once per cell
        for batch in batches:
            step_config(argparse.Namespace(**{**vars(args), "precision": precision, "batch_size": batch}))
    print(f"{'precision':>9} {'batch':>6} {'options':<44} {'img/s':>9} {'TFLOP/s':>8} {'peak MiB':>9}")
    cuda = torch.cuda.is_available() and not args.cpu
    option_sets = {**GRID_OPTIONS, **(CUDA_GRID_OPTIONS if cuda else {})}
    for precision in args.precisions.split(","):
        for batch in batches:
            for name, flags in ((n, option_sets[n]) for n in args.grid_options.split(",") if n in option_sets):
                cmd = [sys.executable, "-m", "bench.speed", "--config", args.config, "--precision", precision,
                       "--batch-size", str(batch), "--no-reference", "--rounds", str(args.rounds),
                       "--seconds", str(args.seconds), *flags, *args.overrides]
                if args.cpu:
                    cmd.append("--cpu")
                cell = subprocess.run(cmd, capture_output=True, text=True)
                out = cell.stdout.splitlines()
                ours = next((l for l in out if l.strip().startswith("ours:") and "img/s" in l), None)
                if ours is None:
                    why = (cell.stdout.strip() or cell.stderr.strip() or "no output").splitlines()[-1]
                    print(f"{precision:>9} {batch:>6} {name:<44} {'failed':>9}  {why[:200]}", flush=True)
                    continue
                rate = ours.split()[1]
                tflops = ours.split(";")[1].split()[0]
                memory = next((l.split(":")[1].split()[0] for l in out if l.startswith("peak ")), "-")
                print(f"{precision:>9} {batch:>6} {name:<44} {rate:>9} {tflops:>8} {memory:>9}", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    parser.add_argument("--data-root", default="data", help="MNIST for the reference loop's DataLoader")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: from --seconds)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of a round: steps are sized from a short timed run after the warm-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="time only ours")
    parser.add_argument("--grid", action="store_true", help="table over --precisions x --batch-sizes x option sets")
    parser.add_argument("--precisions", default="fp32,bf16", help="for --grid")
    parser.add_argument("--batch-sizes", default="128", help="for --grid")
    parser.add_argument("--grid-options", default=",".join([*GRID_OPTIONS, *CUDA_GRID_OPTIONS]),
                        help="for --grid: option sets to run, by name (those needing CUDA are skipped without it)")
    args = parser.parse_intermixed_args(argv)  # options and overrides in any order
    if args.grid:
        return grid(args)

    cfg, device, precision = step_config(args)
    cuda = device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runners = {"ours": Ours(cfg)}
    if not args.no_reference:
        runners["reference"] = Reference(cfg, args.data_root, device)
    steps = {}
    for name, runner in runners.items():
        runner.run(args.warmup)
        steps[name] = args.steps or rounds_steps(runner, args.seconds, args.batch_size, device)
    rates = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            rates[name].append(timed(runner, steps[name], args.batch_size, device))

    flops = step_flops(cfg, args.batch_size)
    peak = peak_tflops(device, precision)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    options = (f"precision {precision}, channels_last {cfg.train.channels_last}, fused Adam {cfg.optim.fused}, "
               f"compile {cfg.train.compile and cfg.train.compile_mode}, CUDA graphs {cfg.train.cuda_graphs and cuda}")
    print(f"{args.config}: {cfg.data.image_size}px, batch {args.batch_size}, {where}, torch {torch.__version__}")
    print(f"ours: {options}; reference: fp32, DataLoader + PIL transforms, Sigmoid + BCELoss")
    for name, values in rates.items():
        median = statistics.median(values)
        achieved = median / args.batch_size * flops / 1e12
        vs_peak = f", {100 * achieved / peak:.1f}% of ~{peak:.2f} TFLOP/s peak (estimated)" if peak and name == "ours" else ""
        print(f"{name:>9}: {median:8.1f} img/s (rounds of {steps[name]} steps: {', '.join(f'{v:.1f}' for v in values)}); "
              f"{achieved:.3f} TFLOP/s{vs_peak}")
    kind, mib = peak_memory(device)
    print(f"peak {kind}: {mib:.0f} MiB")
    if "reference" in rates:
        print(f"ratio ours/reference: {statistics.median(rates['ours']) / statistics.median(rates['reference']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

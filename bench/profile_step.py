"""Where the time of one training step goes: device busy time vs wall time, and the top kernels.

    python -m bench.profile_step                                  # 64x64 model, batch 128, best precision
    python -m bench.profile_step --no-cuda-graphs                 # the eager step: launch-bound at batch 128?

Profiles the same step bench.speed times (dcgan.train.step.GANStep on device-resident images). On a GPU it
prints, per step: wall time without the profiler, the sum of kernel times (busy time), kernel launches, and
busy / wall. Busy far below wall means the GPU waits for the host (Python and launch overhead: a larger batch
or CUDA graphs help); busy close to wall means the kernels themselves are the bound.
"""
from __future__ import annotations

import argparse

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.harness import Ours, add_step_arguments, rounds_steps, run_cli, step_config, timed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    parser.add_argument("--steps", type=int, default=20, help="profiled steps")
    parser.add_argument("--rows", type=int, default=15, help="kernels/ops shown in the table")
    args = parser.parse_intermixed_args(argv)  # options and overrides in any order
    cfg, device, precision = step_config(args)
    ours = Ours(cfg)
    ours.run(args.warmup)
    batch, steps = cfg.train.batch_size, args.steps
    # Wall time per step without the profiler attached, over ~3 s of steps (a GPU step takes milliseconds).
    wall_ms = 1000 * batch / timed(ours, rounds_steps(ours, 3.0, batch, device), batch, device)

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        timed(ours, steps, batch, device)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.config}: {cfg.data.image_size}px, batch {batch}, precision {precision}, channels_last "
          f"{cfg.train.channels_last}, fused {cfg.optim.fused}, compile {cfg.train.compile and cfg.train.compile_mode}, "
          f"CUDA graphs {cfg.train.cuda_graphs and cuda}; "
          f"{where}, torch {torch.__version__}")
    if cuda:
        kernels = [e for e in prof.events()
                   if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
        busy_ms = sum(e.self_device_time_total for e in kernels) / 1000 / steps
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=args.rows))
        print(f"per step: wall {wall_ms:.3f} ms, GPU busy {busy_ms:.3f} ms ({100 * busy_ms / wall_ms:.0f}% of wall), "
              f"{len(kernels) / steps:.0f} kernels; {batch * 1000 / wall_ms:.0f} img/s")
    else:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
        print(f"per step: wall {wall_ms:.3f} ms; {batch * 1000 / wall_ms:.0f} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

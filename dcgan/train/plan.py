"""What this machine and launch make of a configuration, and every check that can reject it there.

dcgan/config.py rejects values that are wrong anywhere; this module rejects what is wrong here (fp16 without a
GPU, CUDA options that fail together, a batch that does not split over the processes or is larger than the
dataset). train() calls it before a run dir exists, so a mistake is one line and leaves nothing behind.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dcgan.config import Config, ConfigError
from dcgan.train.data import steps_per_epoch


def use_cpu(cfg: Config) -> bool:
    """train.cpu, `accelerate launch --cpu` (an environment variable), or no CUDA at all. On the CPU a
    torchrun-started job uses gloo and still runs distributed."""
    launcher_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return cfg.train.cpu or launcher_cpu or not torch.cuda.is_available()


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AVX512-BF16 or AMX: bf16 matrix units, where bf16 autocast runs 2-3x faster than fp32 (BENCHMARKS.md)."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(cfg: Config, cpu: bool) -> str:
    """The precision that runs. An explicit train.mixed_precision wins; `auto` takes `accelerate launch
    --mixed_precision fp16|bf16` (its default "no" cannot be told from no choice), else the device's fastest."""
    precision = cfg.train.mixed_precision
    if precision == "auto":
        launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        if launcher in ("fp16", "bf16"):
            precision = launcher
        elif not cpu:
            precision = "fp16"
        else:
            precision = "bf16" if cpu_has_native_bf16() else "no"
    if precision == "fp16" and cpu:
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU: use bf16, no or auto on CPU")
    return precision


def check_cuda_options(cfg: Config, graphs: bool) -> None:
    """Speed options that fail together on a GPU: one line before the first step, not a traceback in it."""
    if graphs and cfg.train.mixed_precision == "fp16" and not (cfg.optim.fused and cfg.optim.name == "adam"):
        raise ConfigError("train.cuda_graphs with fp16 needs fused Adam (optim.name=adam, optim.fused=true: an unfused "
                          "loss-scaler step reads the GPU, which a graph cannot), or set train.cuda_graphs=false")
    if graphs and cfg.loss.r1_gamma and cfg.loss.r1_every > 1:
        raise ConfigError(f"loss.r1_every={cfg.loss.r1_every} runs R1 on some steps only, which one captured CUDA graph "
                          f"cannot: set loss.r1_every=1 or train.cuda_graphs=false")
    if graphs and cfg.optim.d_steps > 1:
        raise ConfigError(f"optim.d_steps={cfg.optim.d_steps} updates G on some steps only, which one captured CUDA graph "
                          f"cannot: set train.cuda_graphs=false or optim.d_steps=1")
    if graphs and cfg.optim.lr_decay != "none":
        raise ConfigError(f"optim.lr_decay={cfg.optim.lr_decay} sets the learning rate every step, which one captured "
                          f"CUDA graph cannot: set train.cuda_graphs=false or optim.lr_decay=none")
    if cfg.train.compile and cfg.train.channels_last:
        # Inductor predicts contiguous ConvTranspose weight gradients where cuDNN returns channels_last ones and
        # fails its stride check in the first backward (pytorch/pytorch#171622; seen with torch 2.11 on an H100).
        raise ConfigError("train.compile with train.channels_last fails on CUDA (PyTorch issue 171622): "
                          "set train.channels_last=false to compile, or train.compile=false")


def check_trackers(cfg: Config) -> None:
    """An optional tracker's package must be installed before anything runs."""
    if "wandb" in cfg.train.trackers.split(",") and importlib.util.find_spec("wandb") is None:
        raise ConfigError("train.trackers includes wandb, which is not installed: "
                          "pip install -r requirements-wandb.txt (or drop wandb from train.trackers)")


@dataclass(frozen=True)
class RunPlan:
    """The shape of a run on this launch: who this process is, its share of the batch, how many steps."""
    world_size: int
    rank: int
    local_batch: int
    steps_per_epoch: int
    total_steps: int
    cuda_graphs: bool   # the whole step captured as one CUDA graph (one CUDA process only)


def plan_run(cfg: Config, world_size: int, rank: int, num_images: int, cuda: bool) -> RunPlan:
    """Checks what depends on the number of processes, the dataset and the device, and plans the run."""
    check_trackers(cfg)
    batch = cfg.train.batch_size
    if batch % world_size:
        raise ConfigError(f"train.batch_size={batch} is not divisible by the world size {world_size}: "
                          f"use a multiple of {world_size}")
    per_epoch = steps_per_epoch(num_images, batch)
    if per_epoch == 0:
        raise ConfigError(f"train.batch_size={batch} is larger than the {num_images} training images")
    # NCCL collectives (DDP, SyncBatchNorm) are not captured: several processes run the step eagerly.
    graphs = cfg.train.cuda_graphs and cuda and world_size == 1
    if cuda:
        check_cuda_options(cfg, graphs)
    total = planned_steps(cfg.train.epochs, cfg.train.max_steps, per_epoch)
    return RunPlan(world_size, rank, batch // world_size, per_epoch, total, graphs)


def planned_steps(epochs: int, max_steps: int, per_epoch: int) -> int:
    """A run's length in steps: its epochs, cut at train.max_steps when that is set."""
    return min(epochs * per_epoch, max_steps) if max_steps else epochs * per_epoch

"""The timing harness the bench scripts share: the trainer's step and the canonical DCGAN loop as runners, timed
rounds, peak FLOP/s and memory, the options that describe a benchmarked step, and one-line errors.

bench/speed.py, bench/throughput.py and bench/profile_step.py are the command lines built on it.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from dcgan.config import ConfigError, load_config
from dcgan.train.data import DataError
from dcgan.machinery.memory import peak_memory  # noqa: F401  (the bench CLIs import it from here)
from dcgan.models import models_for

# Dense peak throughput, TFLOP/s (vendor datasheets), for the figure "achieved / peak", matched against the
# device name in this order. fp32 convolutions run on TF32 tensor cores unless cuDNN's TF32 is turned off
# (PyTorch allows it for convolutions by default), so their ceiling is the tf32 one.
GPU_PEAKS = {"H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0},
             "H100": {"fp32": 67.0, "tf32": 495.0, "fp16": 989.0, "bf16": 989.0},   # SXM ("H100 80GB HBM3")
             "H200": {"fp32": 67.0, "tf32": 495.0, "fp16": 989.0, "bf16": 989.0},
             "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0}}


def peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                if precision == "no":
                    return peaks["tf32" if torch.backends.cudnn.allow_tf32 else "fp32"]
                return peaks[precision]
        return None
    # CPU: cores x clock x FLOPs per cycle (two 512-bit FMA units: 64 fp32 FLOPs; bf16 dot products double it).
    try:
        flags = open("/proc/cpuinfo").read()
        mhz = max(float(line.split(":")[1]) for line in flags.splitlines() if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        return None
    per_cycle = 64 if "avx512f" in flags else 32
    if precision == "bf16" and "avx512_bf16" in flags:
        per_cycle *= 2
    return torch.get_num_threads() * mhz * 1e6 * per_cycle / 1e12


class Ours:
    """The trainer's step (dcgan.train.step.GANStep; one CUDA graph per step on a single GPU unless train.cuda_graphs
    is off) on device-resident random images, with the trainer's own device and option checks."""

    def __init__(self, cfg):
        from accelerate import Accelerator
        from dcgan.train.plan import plan_run, resolve_precision, use_cpu
        from dcgan.train.step import build_gan_step, graphed
        # The trainer's own checks: fp16 without CUDA is an error, not an fp32 run under an fp16 label.
        cpu = use_cpu(cfg)
        cfg.train.mixed_precision = resolve_precision(cfg, cpu)
        plan = plan_run(cfg, world_size=1, rank=0, num_images=8 * cfg.train.batch_size, cuda=not cpu)
        self.accelerator = Accelerator(cpu=cpu, mixed_precision=cfg.train.mixed_precision)
        torch.manual_seed(0)
        G, D = models_for(cfg)
        self.step = graphed(build_gan_step(cfg, self.accelerator, G, D, plan.cuda_graphs), plan.cuda_graphs)
        self.device, self.batch, self.nz = self.accelerator.device, cfg.train.batch_size, cfg.model.nz
        size = cfg.data.image_size
        self.images = torch.rand(self.batch * 8, 1, size, size, device=self.device) * 2 - 1
        self.labels = torch.randint(0, 10, (self.batch * 8,), device=self.device)
        self.noise = torch.Generator(device=self.device).manual_seed(0)
        self.i = 0

    def run(self, steps: int) -> None:
        for _ in range(steps):
            index = torch.randint(0, len(self.images), (self.batch,), device=self.device)
            z = torch.randn(self.batch, self.nz, generator=self.noise, device=self.device)
            stats = self.step(self.images[index], self.labels[index], z)
        stats.values.sum().item()  # the trainer syncs with the host only at its log interval


class Reference:
    """examples/dcgan/main.py's loop, on the same networks (D + Sigmoid) and batch."""

    def __init__(self, cfg, data_root: str, device: torch.device):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms
        from dcgan.train.data import load_mnist_uint8
        load_mnist_uint8(data_root)  # a one-line DataError if the files are missing
        size = cfg.data.image_size
        dataset = datasets.MNIST(data_root, train=True, transform=transforms.Compose(
            [transforms.Resize(size), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
        self.loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, num_workers=2,
                                 drop_last=True, persistent_workers=True)
        self.batches = iter(self.loader)
        torch.manual_seed(0)
        G, D = models_for(cfg)
        self.netG, self.netD = G.to(device), nn.Sequential(D, nn.Sigmoid()).to(device)
        self.criterion = nn.BCELoss()
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=cfg.optim.lr_g, betas=betas)
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=cfg.optim.lr_d, betas=betas)
        self.device, self.nz = device, cfg.model.nz

    def next_batch(self):
        try:
            return next(self.batches)[0]
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)[0]

    def run(self, steps: int) -> None:
        for _ in range(steps):
            real = self.next_batch().to(self.device)
            b = real.size(0)
            self.netD.zero_grad()
            label = torch.full((b,), 1.0, device=self.device)
            output = self.netD(real).view(-1)
            self.criterion(output, label).backward()
            output.mean().item()
            fake = self.netG(torch.randn(b, self.nz, 1, 1, device=self.device))
            label.fill_(0.0)
            output = self.netD(fake.detach()).view(-1)
            self.criterion(output, label).backward()
            output.mean().item()
            self.optD.step()
            self.netG.zero_grad()
            label.fill_(1.0)
            output = self.netD(fake).view(-1)
            self.criterion(output, label).backward()
            output.mean().item()
            self.optG.step()


def timed(runner, steps: int, batch: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    runner.run(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def rounds_steps(runner, seconds: float, batch: int, device: torch.device) -> int:
    """Steps that take about `seconds` for this runner: a GPU does thousands of steps in the time a CPU does few."""
    rate = timed(runner, 3, batch, device)
    return max(3, round(seconds * rate / batch))


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """What a benchmarked step is: model config, batch, precision, speed options, device."""
    parser.add_argument("--config", default="configs/mnist64.yaml")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default="best", help="fp32 (or no) | fp16 | bf16 | best (fp16 on CUDA, bf16 on CPU)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--no-fused", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default", help="default | max-autotune-no-cudagraphs")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="run the step eagerly on a GPU")
    parser.add_argument("--cpu", action="store_true", help="benchmark the CPU even when CUDA is present")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (the CUDA graph is captured in them)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (the model, not speed)")


def step_config(args) -> tuple:
    """(config, device, precision) for the step described by add_step_arguments' options."""
    cuda = torch.cuda.is_available() and not args.cpu
    # fp32 is the config's "no" (no mixed precision); "best" is what each device trains fastest in.
    precision = {"best": "fp16" if cuda else "bf16", "fp32": "no"}.get(args.precision, args.precision)
    cfg = load_config(args.config, [*args.overrides, f"train.batch_size={args.batch_size}",
                                    f"train.mixed_precision={precision}", f"train.channels_last={not args.no_channels_last}",
                                    f"optim.fused={not args.no_fused}", f"train.compile={args.compile}",
                                    f"train.compile_mode={args.compile_mode}", f"train.cuda_graphs={not args.no_cuda_graphs}",
                                    f"train.cpu={not cuda}"])
    return cfg, torch.device("cuda" if cuda else "cpu"), precision


def run_cli(main) -> int:
    """Run a bench entry point as train_ddp.py runs training: a config or data mistake is one line on stderr
    and exit status 2, not a traceback."""
    try:
        return main()
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2



"""Our training step against the canonical DCGAN loop, side by side in one process.

    python -m bench.speed --data-root ../shared/data       # 64x64 model, batch 128, best settings for the device
    python -m bench.speed --precision fp32 --no-channels-last --no-fused  # ours with every speed option off
    python -m bench.speed --batch-size 256 --precision fp16 --no-cuda-graphs   # eager steps on a GPU
    python -m bench.speed --config configs/mnist32.yaml model.ngf=16    # any config override, as for training
    python -m bench.speed --grid --precisions fp32,fp16,bf16 --batch-sizes 128,256   # table: one process per cell

"Reference" is the plain style of PyTorch's examples/dcgan/main.py: a torchvision DataLoader with per-image
Resize/ToTensor/Normalize (2 workers), Sigmoid + BCELoss, fp32, separate real/fake backward passes and .item()
every step; same networks, same batch. "Ours" is the trainer's step (dcgan.training.make_train_step: one CUDA
graph per step on a single GPU unless --no-cuda-graphs) on device-resident images with the chosen options.
Throughput = real images consumed per second (one D and one G update per batch); warm-up
excluded; rounds alternate ours/reference so machine noise hits both; medians are reported, and the last line
is `ratio ours/reference: N.NN`. FLOP/s counts the convolutions: a step is 3 G forwards + 8 D forwards
(G: forward + backward; D: 2 forwards + backward in the D step, forward + input-gradient backward in the G step).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch
from torch import nn

from dcgan.config import ConfigError, load_config
from dcgan.data import DataError
from dcgan.models import build_models

# Dense peak throughput, TFLOP/s (vendor datasheets), for the figure "achieved / peak", matched against the
# device name in this order. fp32 convolutions run on TF32 tensor cores unless cuDNN's TF32 is turned off
# (PyTorch allows it for convolutions by default), so their ceiling is the tf32 one.
GPU_PEAKS = {"H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0},
             "H100": {"fp32": 67.0, "tf32": 495.0, "fp16": 989.0, "bf16": 989.0},   # SXM ("H100 80GB HBM3")
             "H200": {"fp32": 67.0, "tf32": 495.0, "fp16": 989.0, "bf16": 989.0},
             "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0}}


def conv_flops(module: nn.Module, example: torch.Tensor) -> float:
    """Forward FLOPs (2 x multiply-accumulates) of every convolution in `module` for input `example`."""
    total = 0.0

    def hook(layer, inputs, output):
        nonlocal total
        kernel = layer.kernel_size[0] * layer.kernel_size[1]
        if isinstance(layer, nn.ConvTranspose2d):
            total += 2.0 * inputs[0].numel() * layer.out_channels * kernel / layer.groups
        else:
            total += 2.0 * output.numel() * layer.in_channels * kernel / layer.groups

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        module(example)
    for handle in handles:
        handle.remove()
    return total


def step_flops(image_size: int, nz: int, ngf: int, ndf: int, batch: int) -> float:
    G, D = build_models(image_size, nz, ngf, ndf)
    return 3 * conv_flops(G, torch.randn(batch, nz)) + 8 * conv_flops(D, torch.randn(batch, 1, image_size, image_size))


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


def peak_memory(device: torch.device) -> tuple[str, float]:
    """(what was measured, MiB): peak CUDA allocation on a GPU, the process's peak resident memory on a CPU."""
    if device.type == "cuda":
        return "CUDA memory allocated", torch.cuda.max_memory_allocated(device) / 2**20
    return "process RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


class Ours:
    def __init__(self, cfg):
        from accelerate import Accelerator
        from dcgan.training import build_training_objects, make_train_step, use_cpu
        # use_cpu is the trainer's own check: fp16 without CUDA is an error, not an fp32 run under an fp16 label.
        self.accelerator = Accelerator(cpu=use_cpu(cfg), mixed_precision=cfg.train.mixed_precision)
        torch.manual_seed(0)
        G, D, _, opt_g, opt_d = build_training_objects(cfg, self.accelerator)
        self.step = make_train_step(cfg, self.accelerator, G, D, opt_g, opt_d)
        self.device, self.batch, self.nz = self.accelerator.device, cfg.train.batch_size, cfg.model.nz
        size = cfg.data.image_size
        self.images = torch.rand(self.batch * 8, 1, size, size, device=self.device) * 2 - 1
        self.noise = torch.Generator(device=self.device).manual_seed(0)
        self.i = 0

    def run(self, steps: int) -> None:
        for _ in range(steps):
            index = torch.randint(0, len(self.images), (self.batch,), device=self.device)
            z = torch.randn(self.batch, self.nz, generator=self.noise, device=self.device)
            stats = self.step(self.images[index], z)
        stats.sum().item()  # the trainer syncs with the host only at its log interval


class Reference:
    """examples/dcgan/main.py's loop, on the same networks (D + Sigmoid) and batch."""

    def __init__(self, cfg, data_root: str, device: torch.device):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms
        from dcgan.data import load_mnist_uint8
        load_mnist_uint8(data_root)  # a one-line DataError if the files are missing
        size = cfg.data.image_size
        dataset = datasets.MNIST(data_root, train=True, transform=transforms.Compose(
            [transforms.Resize(size), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
        self.loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, num_workers=2,
                                 drop_last=True, persistent_workers=True)
        self.batches = iter(self.loader)
        torch.manual_seed(0)
        G, D = build_models(size, cfg.model.nz, cfg.model.ngf, cfg.model.ndf)
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
    import subprocess
    import sys
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
    args = parser.parse_args(argv)
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

    flops = step_flops(cfg.data.image_size, cfg.model.nz, cfg.model.ngf, cfg.model.ndf, args.batch_size)
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


def run_cli(main) -> int:
    """Run a bench entry point as train_ddp.py runs training: a config or data mistake is one line on stderr
    and exit status 2, not a traceback."""
    try:
        return main()
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

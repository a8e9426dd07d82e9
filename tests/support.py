"""What the tests share: a small MNIST in the real IDX format, running the trainer as a user does, and the
comparisons several test modules make. Fixtures live in conftest.py."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
import sys
import urllib.error
import urllib.request
from pathlib import Path

import json

import numpy as np
import torch

from dcgan.models import NUM_CLASSES

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"

# A tiny model that trains in a few ms per step on a 2-core CPU: tests exercise the code path, not quality.
# On the CPU even where a GPU is present (gloo, bit-exact resume); tests/test_gpu.py covers CUDA.
# fp32 pinned: train.mixed_precision=auto would pick bf16 on a CPU with bf16 units, and tests compare numbers.
TINY = ["data.image_size=28", "model.nz=16", "model.ngf=8", "model.ndf=8", "train.batch_size=32",
        "train.log_every=4", "train.num_samples=16", "data.download=false", "train.cpu=true",
        "train.mixed_precision=no"]


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """MNIST's IDX3 format: magic 2051, count, rows, cols (big-endian int32), then uint8 pixels."""
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blurry strokes on black, digit-like enough for BatchNorm statistics and losses to be realistic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    labels = rng.integers(0, 10, n)
    images = np.zeros((n, 28, 28), dtype=np.float32)
    for i, label in enumerate(labels):
        cx, cy = 14 + rng.normal(0, 2), 14 + rng.normal(0, 2)
        radius = 5 + label * 0.4
        ring = np.exp(-((np.hypot(xx - cx, yy - cy) - radius) ** 2) / 3.0)
        images[i] = np.clip(ring * 255 * rng.uniform(0.7, 1.0), 0, 255)
    return images.astype(np.uint8), labels


def legible_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits in Pillow's own font, jittered in size, place and brightness: unlike fake_digits, a classifier
    learns them (100% test accuracy after `python -m evaluation.classifier`'s 3 epochs on 6000 of them)."""
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    fonts = {size: ImageFont.load_default(size=size) for size in range(16, 23)}
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        image = Image.new("L", (28, 28))
        ImageDraw.Draw(image).text((14 + rng.normal(0, 1.5), 14 + rng.normal(0, 1.5)), str(label), anchor="mm",
                                   fill=int(rng.integers(180, 256)), font=fonts[int(rng.integers(16, 23))])
        images[i] = np.asarray(image)
    return images, labels


def make_mnist(root: Path, n_train: int = 512, n_test: int = 128, digits=fake_digits) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = digits(n, seed)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def free_port() -> int:
    """A TCP port nobody listens on now (for servers and rendezvous the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch_when_up(url: str, check_alive, seconds: float = 120) -> bytes:
    """GET `url` from a server that is starting: retried until it answers; `check_alive()` raises (with the
    server's own output) once the server has died, rather than waiting out the time."""
    deadline = time.time() + seconds
    while True:
        try:
            return urllib.request.urlopen(url, timeout=10).read()
        except (urllib.error.URLError, ConnectionError):
            check_alive()
            assert time.time() < deadline, f"{url}: no answer in {seconds:g} s"
            time.sleep(0.1)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_command(overrides: list[str], nproc: int = 1, script: str = "train_ddp.py") -> list[str]:
    target = str(ROOT / script)
    if nproc == 1:
        return [sys.executable, target, *overrides]
    # torchrun --standalone: a local rendezvous on a free port, so tests never collide on 29500
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            target, *overrides]


def run_train(overrides: list[str], nproc: int = 1, script: str = "train_ddp.py", timeout: int = 300,
              check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(train_command(overrides, nproc, script), cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def load_ckpt(run_dir: Path, step: int | None = None) -> dict:
    folder = Path(run_dir) / "checkpoints"
    path = folder / f"ckpt-{step:08d}.pt" if step is not None else sorted(folder.glob("ckpt-*.pt"))[-1]
    return torch.load(path, map_location="cpu", weights_only=True)


def only_run_dir(out_dir: Path) -> Path:
    runs = [p for p in Path(out_dir).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def assert_same_state(a: dict, b: dict):
    """Two training checkpoints hold the same models, EMA, optimizer moments and noise generator state."""
    for part in ("generator", "discriminator", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for part in ("opt_g", "opt_d"):
        for index, moments in a[part]["state"].items():
            for name, value in moments.items():
                assert torch.equal(value, b[part]["state"][index][name]), f"{part}[{index}].{name} differs"
    assert torch.equal(a["rng"]["noise"], b["rng"]["noise"])


def check_synced_batchnorm(device: str, expected_type: str, tmp_path) -> None:
    """tests/helpers/syncbn_check.py on 2 processes: synced BN on half batches == BatchNorm on the whole batch."""
    report_path = tmp_path / "syncbn.json"
    run_train([str(report_path), device], nproc=2, script="tests/helpers/syncbn_check.py")
    report = json.loads(report_path.read_text())
    assert report["world_size"] == 2 and report["synced_type"] == expected_type
    for key in ("output_max_diff", "input_grad_max_diff", "weight_grad_max_diff", "running_var_max_diff"):
        assert report[key] < 1e-4, (key, report[key])


def one_line_error(result) -> str:
    """A command's failure as users must see it: exit status 2 and one 'error: ...' line on stderr."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


# ---- SLURM jobs on the local cluster (conftest.slurm_env) ----------------------------------------------------

def job_state(env, job: str) -> str:
    text = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True).stdout
    return text.split("JobState=")[1].split()[0] if "JobState=" in text else ""


def wait_job(env, job: str, timeout: float = 400) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_state(env, job)
        if state and state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"):
            return state
        time.sleep(0.2)
    return f"still {job_state(env, job)} after {timeout}s"


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def make_trainer(cfg, mnist_root, run_dir: Path):
    """An in-process Trainer for `cfg` on the small IDX set (28 px), models seeded as a run seeds them."""
    from accelerate import Accelerator
    from dcgan.train.data import Digits, load_mnist_labels, load_mnist_uint8, to_training_images
    from dcgan.train.plan import plan_run
    from dcgan.train.loop import Trainer

    data = Digits(to_training_images(load_mnist_uint8(mnist_root), 28), load_mnist_labels(mnist_root))
    plan = plan_run(cfg, world_size=1, rank=0, num_images=len(data.images), cuda=False)
    run_dir.mkdir()
    torch.manual_seed(0)
    return Trainer(cfg, plan, Accelerator(cpu=True), run_dir, data)


class DigitLookup(torch.nn.Module):
    """A 'conditional generator' that draws a real image of the digit asked for (of digit+shift, to fail), and
    keeps what it was asked and what it drew."""
    conditional = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int):
        super().__init__()
        self.by_digit = [images[labels == d] for d in range(NUM_CLASSES)]
        self.shift, self.anchor = shift, torch.nn.Parameter(torch.zeros(1))
        self.asked, self.drawn = [], []

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        picks = [self.by_digit[(int(d) + self.shift) % NUM_CLASSES] for d in labels]
        images = torch.stack([p[i % len(p)] for i, p in enumerate(picks)])
        self.asked.append(labels.clone())
        self.drawn.append(images)
        return images

"""Shared fixtures: a small MNIST in the real IDX format, and a way to run the trainer as a user does."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"

# A tiny model that trains in a few ms per step on a 2-core CPU: tests exercise the code path, not quality.
# On the CPU even where a GPU is present (gloo, bit-exact resume); tests/test_gpu.py covers CUDA.
TINY = ["data.image_size=28", "model.nz=16", "model.ngf=8", "model.ndf=8", "train.batch_size=32",
        "train.log_every=4", "train.num_samples=16", "data.download=false", "train.cpu=true"]


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


def make_mnist(root: Path, n_train: int = 512, n_test: int = 128) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = fake_digits(n, seed)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return make_mnist(tmp_path_factory.mktemp("data"))


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
    return torch.load(path, map_location="cpu", weights_only=False)


def only_run_dir(out_dir: Path) -> Path:
    runs = [p for p in Path(out_dir).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]

"""MNIST as one tensor on the training device, and the per-epoch shuffle each process takes its shard of.

Images go through torchvision's real `datasets.MNIST` loader once, are resized to the training size once and
scaled to [-1, 1]; after that a training step is one indexing operation, with no per-image PIL work.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.datasets import MNIST

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DataError(RuntimeError):
    """Missing or unreadable data; the message is one line saying what to fix."""


def load_mnist_uint8(root: str | Path, train: bool = True, download: bool = False) -> torch.Tensor:
    """(N, 28, 28) uint8 digits through torchvision's loader; a one-line DataError when they are missing."""
    raw = Path(root) / "MNIST" / "raw"
    missing = [name for name in RAW_FILES if not (raw / name).is_file()]
    if missing and download:
        try:
            MNIST(root=str(root), train=train, download=True)
            missing = []
        except Exception as exc:  # no network, mirror down, disk full: all end the same way for the user
            raise DataError(f"could not download MNIST into {raw} ({type(exc).__name__}); put the files "
                            f"{', '.join(RAW_FILES)} there or set data.root to a folder holding MNIST/raw/") from None
    if missing:
        raise DataError(f"MNIST not found: {raw} lacks {', '.join(missing)} (set data.root to the folder holding "
                        f"MNIST/raw/, or data.download=true when online)")
    try:
        return MNIST(root=str(root), train=train, download=False).data
    except Exception as exc:
        raise DataError(f"MNIST files in {raw} could not be read ({exc}); replace them with the original IDX files") from None


def load_mnist_labels(root: str | Path, train: bool = True) -> torch.Tensor:
    """(N,) int64 digit classes, in the order of load_mnist_uint8's images (call that first: it checks the files)."""
    return MNIST(root=str(root), train=train, download=False).targets


def to_training_images(digits: torch.Tensor, image_size: int, device: torch.device | str = "cpu",
                       chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, S, S) in [-1, 1], resized (bilinear, antialiased) on `device`."""
    out = torch.empty((digits.shape[0], 1, image_size, image_size), dtype=torch.float32, device=device)
    for start in range(0, digits.shape[0], chunk):  # chunks bound the temporary memory of the resize
        x = digits[start:start + chunk].to(device).unsqueeze(1).float() / 255.0
        if image_size != x.shape[-1]:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = x.clamp_(0.0, 1.0) * 2.0 - 1.0
    return out


def steps_per_epoch(num_images: int, global_batch: int) -> int:
    """Every process runs the same number of steps: the incomplete last global batch is dropped."""
    return num_images // global_batch


def epoch_indices(num_images: int, global_batch: int, rank: int, world_size: int, seed: int, epoch: int) -> torch.Tensor:
    """(steps, global_batch // world_size) image indices for this process in this epoch.

    One seeded permutation per epoch, identical on every process; global batch s is perm[s*B:(s+1)*B] and
    process r takes its r-th contiguous slice, so shards are disjoint and 2 x B/2 sees the same images as 1 x B.
    """
    local = global_batch // world_size
    steps = steps_per_epoch(num_images, global_batch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_images, generator=generator)[: steps * global_batch]
    return perm.view(steps, world_size, local)[:, rank]


class Digits(NamedTuple):
    """Training images and their classes, on the training device."""
    images: torch.Tensor   # (N, 1, S, S) in [-1, 1]
    labels: torch.Tensor   # (N,) int64


class ShardedBatches:
    """This process's batch of every step: step s is in epoch s // steps_per_epoch, and each epoch's shuffle
    (epoch_indices) is drawn once, when its first batch is asked for, so a resume mid-epoch sees the same images."""

    def __init__(self, digits: Digits, global_batch: int, rank: int, world_size: int, seed: int):
        self.digits, self.global_batch, self.rank, self.world_size, self.seed = digits, global_batch, rank, world_size, seed
        self.steps_per_epoch = steps_per_epoch(len(digits.images), global_batch)
        self.epoch, self.indices = -1, None

    def batch(self, step: int) -> Digits:
        epoch = step // self.steps_per_epoch
        if epoch != self.epoch:
            self.indices = epoch_indices(len(self.digits.images), self.global_batch, self.rank, self.world_size,
                                         self.seed, epoch).to(self.digits.images.device)
            self.epoch = epoch
        index = self.indices[step % self.steps_per_epoch]
        return Digits(self.digits.images[index], self.digits.labels[index])

"""Randomness that makes a run reproducible and its resume exact: the latent noise of every step, and the global
random states a checkpoint carries."""
from __future__ import annotations

import random

import torch

from .models import NUM_CLASSES, balanced_labels


class LatentNoise:
    """z for each step. Every process draws the noise of the whole global batch from one generator and keeps its
    own slice: the run then does not depend on the number of processes, and one generator state makes resume exact."""

    def __init__(self, nz: int, global_batch: int, rank: int, local_batch: int, seed: int, device: torch.device):
        self.nz, self.global_batch, self.device = nz, global_batch, device
        self.slice = slice(rank * local_batch, (rank + 1) * local_batch)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def next(self) -> torch.Tensor:
        z = torch.randn(self.global_batch, self.nz, generator=self.generator, device=self.device)
        return z[self.slice]

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def fixed_noise(count: int, nz: int, seed: int, device: torch.device) -> torch.Tensor:
    """Noise drawn from its own seeded generator: the same on every process and run, never moving the others."""
    return torch.randn(count, nz, generator=torch.Generator().manual_seed(seed)).to(device)


def global_rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def load_global_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def grid_labels(count: int, conditional: bool, device: torch.device | str) -> tuple[torch.Tensor, int]:
    """(labels, images per row) of a sample grid: `count` images in a square grid, or for a conditional model one
    row per digit 0-9, as many columns as `count` needs (count rounded up to a multiple of 10)."""
    if not conditional:
        return balanced_labels(count, device), max(1, int(count ** 0.5))
    per_row = -(-count // NUM_CLASSES)
    return torch.arange(NUM_CLASSES, device=device).repeat_interleave(per_row), per_row

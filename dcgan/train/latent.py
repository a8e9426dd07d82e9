"""The latent noise of a run: z for every step (reproducible, and exact across resume and any number of
processes), and the fixed noises its sample grids and EMA statistics use."""
from __future__ import annotations

import torch


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


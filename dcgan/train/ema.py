"""Exponential moving average of the generator: smoother samples than the raw G for the same training.

The EMA averages G's weights, but BatchNorm statistics cannot be averaged along with them: G's running statistics
describe G's current weights, not the average. Averaged convolution weights are smaller than current ones once
training rotates them, so with G's statistics copied in, the EMA's activations shrink and its samples fade to grey
(seen on an H100 run: FID 22 -> 283 within 10 epochs while G trained normally, BENCHMARKS.md). So the EMA's own
statistics are recomputed from a fixed batch of noise, as SWA does for its averaged weights, whenever it is used.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.swa_utils import update_bn


def make_ema(generator: nn.Module) -> nn.Module:
    ema = copy.deepcopy(generator).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, generator: nn.Module, decay: float, step: int) -> None:
    """ema <- decay * ema + (1 - decay) * G, for parameters (BatchNorm statistics: calibrate_batchnorm).

    The decay ramps up as (1 + step) / (10 + step) so a short run is not dominated by the random init.
    """
    decay = min(decay, (1.0 + step) / (10.0 + step))
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in generator.parameters()], 1.0 - decay)


@torch.no_grad()
def calibrate_batchnorm(ema: nn.Module, noise: torch.Tensor, batch_size: int) -> nn.Module:
    """Set the EMA's BatchNorm statistics to those of its own weights on `noise` (the mean over batches of
    `batch_size`, as in training); returns it in eval mode. A fixed `noise` keeps this deterministic."""
    update_bn(noise.split(batch_size), ema)
    return ema.eval()


class EmaGenerator:
    """The EMA generator as the trainer holds it: updated after every step, its BatchNorm statistics calibrated
    from fixed noise (its own generator, so calibrating never moves the training's random stream) at most once per
    step, when samples, an evaluation, a checkpoint or the export need it. Until step `start` it copies G: an
    average over the first, fast-changing steps would only lag behind G."""

    def __init__(self, generator: nn.Module, decay: float, calibration_noise: torch.Tensor, batch_size: int,
                 start: int = 0):
        self.module = make_ema(generator)  # plain BatchNorm: only ever used in eval mode
        self.decay, self.noise, self.batch_size, self.start = decay, calibration_noise, batch_size, start
        self.calibrated_at = -1

    def update(self, generator: nn.Module, step: int) -> None:
        if step < self.start:
            update_ema(self.module, generator, 0.0, step)
        else:
            update_ema(self.module, generator, self.decay, step - self.start)

    def calibrated(self, step: int) -> nn.Module:
        if self.calibrated_at != step:
            calibrate_batchnorm(self.module, self.noise, self.batch_size)
            self.calibrated_at = step
        return self.module

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
        self.calibrated_at = -1

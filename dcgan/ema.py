"""Exponential moving average of the generator: smoother samples than the raw G for the same training."""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(generator: nn.Module) -> nn.Module:
    ema = copy.deepcopy(generator).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, generator: nn.Module, decay: float, step: int) -> None:
    """ema <- decay * ema + (1 - decay) * G for parameters; buffers (BN running stats) are copied.

    The decay ramps up as (1 + step) / (10 + step) so a short run is not dominated by the random init.
    """
    decay = min(decay, (1.0 + step) / (10.0 + step))
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in generator.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    torch._foreach_copy_(list(ema.buffers()), list(generator.buffers()))  # a few kernels, not one per buffer

"""GAN losses as small strategy objects: D's loss on (real, fake) logits and G's loss on fake logits.

The step (dcgan/step.py) only calls `loss.discriminator(...)` and `loss.generator(...)`; a new loss (hinge,
Wasserstein) is a new class here and a name in LOSSES, not a branch in the step. Losses are computed in fp32 on
logits, which stays finite under fp16 autocast where Sigmoid + BCELoss does not.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .config import LossConfig


class NonSaturatingBCE:
    """The DCGAN losses: D minimizes BCE towards real_target on reals and fake_target on fakes (label smoothing
    when they are not 1 and 0); G minimizes -log D(G(z)), BCE towards the hard label 1."""

    def __init__(self, real_target: float = 1.0, fake_target: float = 0.0):
        self.real_target, self.fake_target = real_target, fake_target

    @classmethod
    def from_config(cls, cfg: LossConfig) -> NonSaturatingBCE:
        smoothing = cfg.label_smoothing
        return cls(cfg.real_label if smoothing else 1.0, cfg.fake_label if smoothing else 0.0)

    @staticmethod
    def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return self._bce(real_logits, self.real_target) + self._bce(fake_logits, self.fake_target)

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return self._bce(fake_logits, 1.0)


# loss.name -> strategy class (config validation accepts exactly these names)
LOSSES = {"bce": NonSaturatingBCE}


def build_loss(cfg: LossConfig) -> NonSaturatingBCE:
    return LOSSES[cfg.name].from_config(cfg)

"""GAN losses as small strategy objects: D's loss on (real, fake) logits and G's loss on fake logits.

The step (dcgan/step.py) only calls `loss.discriminator(...)` and `loss.generator(...)`; a new loss (a
Wasserstein loss, say) is a new class here and a name in LOSSES, not a branch in the step. Each also names
real_target and fake_target: D's mean output probabilities on reals and fakes once D has won (the health verdict
watches for them). Losses are computed in fp32 on logits, which stays finite under fp16 autocast where
Sigmoid + BCELoss does not.
"""
from __future__ import annotations

import math
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


class Hinge:
    """The hinge loss (Lim & Ye 2017; SAGAN, BigGAN): D minimizes relu(1 - D(x)) + relu(1 + D(G(z))) on logits,
    G minimizes -D(G(z)). D is done with an image once its logit is past the margin (+1 real, -1 fake), so
    real_target/fake_target, D's outputs where it has won (for the health verdict), are sigmoid(+1) and sigmoid(-1)."""

    real_target = 1 / (1 + math.exp(-1.0))
    fake_target = 1 - real_target

    @classmethod
    def from_config(cls, cfg: LossConfig) -> Hinge:
        return cls()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.float().mean()


# loss.name -> strategy class (config validation accepts exactly these names)
LOSSES = {"bce": NonSaturatingBCE, "hinge": Hinge}


def build_loss(cfg: LossConfig) -> NonSaturatingBCE | Hinge:
    return LOSSES[cfg.name].from_config(cfg)

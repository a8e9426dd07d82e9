"""The DCGAN (non-saturating) losses on discriminator logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       real_target: float = 1.0, fake_target: float = 0.0) -> torch.Tensor:
    """BCE of D on real images towards real_target plus on fakes towards fake_target (smoothed labels < 1, > 0)."""
    real = F.binary_cross_entropy_with_logits(real_logits.float(), torch.full_like(real_logits, real_target, dtype=torch.float32))
    fake = F.binary_cross_entropy_with_logits(fake_logits.float(), torch.full_like(fake_logits, fake_target, dtype=torch.float32))
    return real + fake


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss: -log D(G(z)), i.e. BCE towards 'real' with the hard label 1."""
    return F.binary_cross_entropy_with_logits(fake_logits.float(), torch.ones_like(fake_logits, dtype=torch.float32))

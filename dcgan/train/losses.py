"""GAN losses as small strategy objects: D's loss on (real, fake) logits and G's loss on fake logits.

The step (dcgan/train/step.py) only calls `loss.discriminator(...)` and `loss.generator(...)`; a new loss (a
Wasserstein loss, say) is a new class here and a name in LOSSES, not a branch in the step. Each also names
real_target and fake_target: D's mean output probabilities on reals and fakes once D has won (the health verdict
watches for them). Losses are computed in fp32 on logits, which stays finite under fp16 autocast where
Sigmoid + BCELoss does not.

Penalties on D's input gradients (WGAN-GP's on real/fake mixtures, R1's on reals) need D itself, not only its
logits: they are objects called with D and the batch, on the steps they are due (GANStep.penalty).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from dcgan.config import LossConfig


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


class Wasserstein:
    """The Wasserstein loss of WGAN-GP (Gulrajani et al. 2017): D (a critic) maximizes D(x) - D(G(z)) on its raw
    outputs, G maximizes D(G(z)); the gradient penalty (GradientPenalty) keeps D near 1-Lipschitz. Its outputs
    are unbounded, so its "won" targets for the health verdict are simply 1 and 0."""

    real_target, fake_target = 1.0, 0.0

    @classmethod
    def from_config(cls, cfg: LossConfig) -> Wasserstein:
        return cls()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return fake_logits.float().mean() - real_logits.float().mean()

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.float().mean()


# loss.name -> strategy class: exactly the names dcgan/config.py's LOSS_NAMES accepts
LOSSES = {"bce": NonSaturatingBCE, "hinge": Hinge, "wgan": Wasserstein}


def build_loss(cfg: LossConfig) -> NonSaturatingBCE | Hinge | Wasserstein:
    return LOSSES[cfg.name].from_config(cfg)


def squared_gradient_norms(D, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """|d D(x) / d x|^2 per image, kept differentiable (create_graph) so that a penalty on it trains D."""
    images = images.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(images, labels).float().sum(), images, create_graph=True)
    return grad.float().flatten(1).square().sum(dim=1)


class GradientPenalty:
    """WGAN-GP's penalty: weight * (|grad D(x_hat)| - 1)^2 at x_hat, a random mixture of a real and a fake image.
    Every process draws the mixing weights of the whole global batch from the global generator (seeded alike on
    all processes, saved in checkpoints) and keeps its own slice, as dcgan.train.latent.LatentNoise does for z: the run
    then does not depend on the number of processes."""

    def __init__(self, weight: float, rank: int = 0, world_size: int = 1):
        self.weight, self.rank, self.world_size = weight, rank, world_size

    def due(self, step: int) -> bool:
        return True

    def __call__(self, D, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = len(real)
        mix = torch.rand(n * self.world_size, 1, 1, 1, device=real.device)[self.rank * n:(self.rank + 1) * n]
        mixed = mix * real.float() + (1 - mix) * fake.detach().float()
        norms = (squared_gradient_norms(D, mixed, labels) + 1e-12).sqrt()
        return self.weight * (norms - 1).square().mean()


class R1:
    """The R1 penalty (Mescheder et al. 2018): gamma / 2 * |grad D(x)|^2 on real images, which keeps D flat
    around the data. Lazy, as StyleGAN2 runs it: every `every` steps, weighted `every` times."""

    def __init__(self, gamma: float, every: int):
        self.gamma, self.every = gamma, every

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def __call__(self, D, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.gamma / 2 * self.every * squared_gradient_norms(D, real, labels).mean()


def build_penalties(cfg: LossConfig, rank: int, world_size: int) -> list[GradientPenalty | R1]:
    penalties: list[GradientPenalty | R1] = []
    if cfg.name == "wgan" and cfg.gp_weight > 0:
        penalties.append(GradientPenalty(cfg.gp_weight, rank, world_size))
    if cfg.r1_gamma > 0:
        penalties.append(R1(cfg.r1_gamma, cfg.r1_every))
    return penalties

"""Is training healthy? One verdict per epoch, from what the loop already has: D's mean outputs, the spread of
the fixed-noise samples, and the classifier's class coverage when an evaluation ran.

Two failures a GAN hides behind reasonable-looking losses:
- D wins outright: its mean outputs sit on their training targets (D(x) at real_label, D(G(z)) at fake_label;
  1 and 0 without label smoothing). G then gets no useful gradient. Judged against the configured targets, not
  fixed bands: with targets 0.85/0.2, D(x) 0.85 and D(G(z)) 0.20 is D winning, not a healthy balance.
- Mode collapse: G maps all noise to a few images. The fixed-noise samples then vary far less than real digits
  (per-pixel spread over the batch, no classifier needed), and the classifier sees few classes.
The classifier alone cannot tell a collapse from samples off MNIST's distribution: early in a run a grey
background makes it read varied digits as one class (BENCHMARKS.md). So few classes while the spread is above the
collapse threshold is named for what is known ("few classes"), not called a collapse.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

WIN_MARGIN = 0.05        # D "sits on its targets" within this share of the gap between the two targets
MIN_SPREAD_RATIO = 0.35  # fixed-noise samples' spread / real digits' spread below this: collapse
MIN_CLASSES = 5          # fewer classes covered than this (classifier coverage): collapse


@torch.no_grad()
def spread(images: torch.Tensor) -> float:
    """How much a batch of images varies: the per-pixel standard deviation over the batch, averaged over pixels."""
    return images.float().flatten(1).std(dim=0).mean().item()


@torch.no_grad()
def sample_spread(generator: torch.nn.Module, noise: torch.Tensor) -> float:
    """spread() of the generator's samples for `noise`, in eval mode (BatchNorm running statistics)."""
    was_training = generator.training
    generator.eval()
    value = spread(generator(noise))
    generator.train(was_training)
    return value


@dataclass
class Health:
    d_x: float
    d_g_z: float
    loss_d: float
    real_target: float                     # D's training targets (loss.real_label / fake_label, or 1 / 0)
    fake_target: float
    spread_ratio: float | None = None      # fixed-noise samples' spread / real digits' spread
    classes_covered: float | None = None   # from the classifier, when an evaluation measured coverage

    def problems(self) -> list[str]:
        found = [] if math.isfinite(self.loss_d) else [f"diverged: loss_D is {self.loss_d}, not a number any more"]
        margin = WIN_MARGIN * (self.real_target - self.fake_target)
        if self.d_x >= self.real_target - margin and self.d_g_z <= self.fake_target + margin:
            found.append(f"D wins outright: D(x)={self.d_x:.3f} and D(G(z))={self.d_g_z:.3f} sit on its targets "
                         f"{self.real_target:g}/{self.fake_target:g}, G gets no useful gradient")
        if self.spread_ratio is not None and self.spread_ratio < MIN_SPREAD_RATIO:
            found.append(f"mode collapse: fixed-noise samples vary {self.spread_ratio:.2f}x as much as real digits "
                         f"(below {MIN_SPREAD_RATIO})")
        if self.classes_covered is not None and self.classes_covered < MIN_CLASSES:
            found.append(self.few_classes())
        return found

    def divergence(self) -> str:
        """The first problem a run does not recover from ('' if none): a loss that is no longer a number, or a mode
        collapse."""
        return next((p for p in self.problems() if p.startswith(("diverged", "mode collapse"))), "")

    def few_classes(self) -> str:
        seen = f"the classifier sees {self.classes_covered:.0f} of 10 classes"
        if self.spread_ratio is None or self.spread_ratio < MIN_SPREAD_RATIO:
            return f"mode collapse: {seen}"
        return (f"few classes: {seen}, yet the fixed-noise samples vary {self.spread_ratio:.2f}x as much as real "
                f"digits: a grey background (the classifier reads digits on one as 8s) or a partial collapse; "
                f"the sample grid and python -m evaluation.grey_probe tell which")

    def verdict(self) -> str:
        problems = self.problems()
        return "healthy" if not problems else "WARNING " + "; ".join(problems)

    def scalars(self) -> dict[str, float]:
        """health/* for TensorBoard."""
        values = {"health/ok": float(not self.problems()), "health/D_x": self.d_x, "health/D_G_z": self.d_g_z,
                  "health/loss_D": self.loss_d}
        if self.spread_ratio is not None:
            values["health/spread_ratio"] = self.spread_ratio
        if self.classes_covered is not None:
            values["health/classes_covered"] = self.classes_covered
        return values

"""Periodic evaluation inside a training run (main process): metrics to TensorBoard, best.pt, early stopping
(no improvement for eval.patience evaluations, or eval.target reached: time-to-quality)."""
from __future__ import annotations

import math

import torch

from dcgan.config import ConfigError, EvalConfig

from .classifier import EvaluationError, cache_dir, find_weights
from .metrics import ALL_METRICS, CLASSIFIER_METRICS, measure, real_images, reported_values

# Metrics where a smaller value is better; for every other one, larger is better.
LOWER_IS_BETTER = {"fid", "kid", "clf_fid", "clf_kid", "kl_to_uniform"}


class PeriodicEvaluator:
    def __init__(self, cfg: EvalConfig, data_root: str, image_size: int, nz: int, device: torch.device):
        self.cfg, self.nz, self.device = cfg, nz, device
        self.metrics = [m.strip() for m in cfg.metrics.split(",") if m.strip()]
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if unknown:
            raise ConfigError(f"eval.metrics: unknown '{','.join(unknown)}': choose from {', '.join(ALL_METRICS)}")
        produced = reported_values(self.metrics)
        if cfg.best_metric not in produced:
            raise ConfigError(f"eval.best_metric='{cfg.best_metric}' is not computed by eval.metrics={cfg.metrics}: "
                              f"use one of {', '.join(sorted(produced))}")
        if any(m in CLASSIFIER_METRICS for m in self.metrics):
            try:
                find_weights(cfg.classifier_weights or None)
            except EvaluationError as exc:
                raise ConfigError(f"eval.metrics needs the MNIST classifier: {exc}") from None
        self.reference = real_images(data_root, cfg.reference, image_size, cfg.num_samples)
        self.reference_name = f"mnist-{cfg.reference}-{image_size}px-{cfg.num_samples}"
        self.best = math.nan
        self.evaluations_since_best = 0

    def due(self, epoch: int) -> bool:
        return self.cfg.every_epochs > 0 and (epoch + 1) % self.cfg.every_epochs == 0

    def evaluate(self, generator: torch.nn.Module) -> dict[str, float]:
        rows = measure(generator, self.nz, self.reference, self.reference_name, self.metrics, self.cfg.num_samples,
                       self.cfg.inception_weights or None, self.cfg.classifier_weights or None, self.device,
                       batch_size=200, seed=0, cache_root=cache_dir() / "fidelity")
        return {r.metric: r.value for r in rows if r.value is not None}

    def record(self, values: dict[str, float]) -> bool:
        """True when this evaluation is the best so far by eval.best_metric."""
        value = values[self.cfg.best_metric]
        better = (math.isnan(self.best) or
                  (value < self.best if self.cfg.best_metric in LOWER_IS_BETTER else value > self.best))
        if better:
            self.best, self.evaluations_since_best = value, 0
        else:
            self.evaluations_since_best += 1
        return better

    def reached_target(self, values: dict[str, float]) -> bool:
        """eval.target met by this evaluation (<= for distances like FID, >= for scores)."""
        if not self.cfg.target:
            return False
        value = values[self.cfg.best_metric]
        return value <= self.cfg.target if self.cfg.best_metric in LOWER_IS_BETTER else value >= self.cfg.target

    def should_stop(self) -> bool:
        return self.cfg.patience > 0 and self.evaluations_since_best >= self.cfg.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "evaluations_since_best": self.evaluations_since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.evaluations_since_best = state["best"], state["evaluations_since_best"]

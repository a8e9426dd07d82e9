"""Periodic evaluation inside a training run (main process): metrics, whether the model is the best so far, and
whether to stop early (no improvement for `patience` evaluations, or `target` reached: time-to-quality).

train_ddp.py builds it from the config (`evaluator_for`) and hands it to the trainer, which calls
`evaluate(generator, train_seconds)` when `due(epoch)`; the trainer logs the values and keeps best.pt.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping

import torch

from .classifier import find_weights
from .common import EvaluationError, cache_dir
from .metrics import check_class_counts, real_images, real_labels
from .registry import CLASSIFIER, CONDITIONAL, LOWER_IS_BETTER, TRAINING_DIGITS, Measurement, measure, needing
from .registry import parse_metrics, real_vs_real, reported_values


def evaluator_for(cfg) -> PeriodicEvaluator | None:
    """The periodic evaluator a run's config asks for (None when eval.every_epochs is 0): built before training
    starts, so a setting that cannot work is a one-line error before any run dir exists."""
    if not cfg.eval.every_epochs:
        return None
    return PeriodicEvaluator(dataclasses.asdict(cfg.eval), cfg.data.root, cfg.data.image_size, cfg.model.nz)


@dataclass
class Evaluation:
    values: dict[str, float]
    improved: bool      # the best so far by best_metric
    summary: str        # one line for the log
    stop: str = ""      # why training should stop now ('' = go on)


class PeriodicEvaluator:
    """`settings`: the `eval` section's keys (every_epochs, metrics, num_samples, reference, best_metric, patience,
    target, classifier_weights, inception_weights). A setting that cannot work raises EvaluationError naming it."""

    def __init__(self, settings: Mapping, data_root: str, image_size: int, nz: int):
        self.settings, self.nz = dict(settings), nz
        try:
            self.metrics = parse_metrics(self.settings["metrics"], "eval.metrics")
        except ValueError as exc:
            raise EvaluationError(str(exc)) from None
        self.best_metric = self.settings["best_metric"]
        produced = reported_values(self.metrics)
        if self.best_metric not in produced:
            raise EvaluationError(f"eval.best_metric='{self.best_metric}' is not computed by eval.metrics="
                                  f"{self.settings['metrics']}: use one of {', '.join(sorted(produced))}")
        if needing(self.metrics, CLASSIFIER):
            try:
                find_weights(self.settings["classifier_weights"] or None)
            except EvaluationError as exc:
                raise EvaluationError(f"eval.metrics needs the MNIST classifier: {exc}") from None
        count, split = self.settings["num_samples"], self.settings["reference"]
        self.reference = real_images(data_root, split, image_size, count)
        self.reference_labels = real_labels(data_root, split, count) if needing(self.metrics, CONDITIONAL) else None
        if "class" in self.metrics:
            check_class_counts(self.reference_labels, count)
        other = "train" if split == "test" else "test"
        self.held_out = (data_root, other, image_size)  # real digits never compared with themselves
        self.training_digits = ((real_images(data_root, other, image_size, count), real_labels(data_root, other, count))
                                if needing(self.metrics, TRAINING_DIGITS) else None)
        self.reference_name = f"mnist-{split}-{image_size}px-{count}"
        self.best = math.nan
        self.evaluations_since_best = 0

    def due(self, epoch: int) -> bool:
        every = self.settings["every_epochs"]
        return every > 0 and (epoch + 1) % every == 0

    def evaluate(self, generator: torch.nn.Module, train_seconds: float) -> Evaluation:
        values = self.measure(generator)
        improved = self.record(values)
        shown = " ".join(f"{name} {value:.4g}" for name, value in values.items())
        progress = "new best" if improved else f"{self.evaluations_since_best} without improvement"
        summary = f"{shown}; best {self.best_metric} {self.best:.4g} ({progress})"
        return Evaluation(values, improved, summary, self.stop_reason(values, train_seconds))

    def measure(self, generator: torch.nn.Module) -> dict[str, float]:
        subject = self.subject(generator, next(generator.parameters()).device)
        return {r.metric: r.value for r in measure(subject, self.metrics) if r.value is not None}

    def floor(self, device: torch.device) -> dict[str, float]:
        """The real-vs-real floor of these evaluations: real digits of the other split measured as the generator is
        (same metrics, count, reference and judge), for every value but the conditional metrics'."""
        root, split, size = self.held_out
        held_out = real_images(root, split, size, self.settings["num_samples"])
        rows = real_vs_real(self.subject(held_out, device), held_out, self.metrics)
        return {r.metric: r.value for r in rows if r.value is not None}

    def subject(self, source: torch.nn.Module | torch.Tensor, device: torch.device) -> Measurement:
        s = self.settings
        return Measurement(source, self.nz, self.reference, self.reference_name, s["num_samples"], device,
                           batch_size=200, seed=0, cache_root=cache_dir() / "fidelity",
                           inception_weights=s["inception_weights"] or None,
                           classifier_weights=s["classifier_weights"] or None,
                           reference_labels=self.reference_labels, training_digits=self.training_digits)

    def record(self, values: dict[str, float]) -> bool:
        """True when this evaluation is the best so far by best_metric."""
        value = values[self.best_metric]
        better = (math.isnan(self.best) or
                  (value < self.best if self.best_metric in LOWER_IS_BETTER else value > self.best))
        if better:
            self.best, self.evaluations_since_best = value, 0
        else:
            self.evaluations_since_best += 1
        return better

    def reached_target(self, values: dict[str, float]) -> bool:
        """target met by this evaluation (<= for distances like FID, >= for scores)."""
        target = self.settings["target"]
        if not target:
            return False
        value = values[self.best_metric]
        return value <= target if self.best_metric in LOWER_IS_BETTER else value >= target

    def should_stop(self) -> bool:
        patience = self.settings["patience"]
        return patience > 0 and self.evaluations_since_best >= patience

    def stop_reason(self, values: dict[str, float], train_seconds: float) -> str:
        metric = self.best_metric
        if self.reached_target(values):
            return (f"{metric} {values[metric]:.4g} reached eval.target={self.settings['target']:g} "
                    f"after {train_seconds:.1f} s of training")
        if self.should_stop():
            return f"{metric} has not improved in {self.settings['patience']} evaluations"
        return ""

    def state_dict(self) -> dict:
        return {"best": self.best, "evaluations_since_best": self.evaluations_since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.evaluations_since_best = state["best"], state["evaluations_since_best"]

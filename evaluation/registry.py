"""Every metric, one entry each (as StyleGAN2-ADA's metrics/metric_main.py): its name, the values it reports and
which way each is better, what it needs, and the function that computes it.

`python -m evaluation.fid` (its --metrics and help), the in-training evaluator, config validation and
experiments.report read this table; a new metric is one entry here, its function, and its test. The functions
take a Measurement (what all metrics of one evaluation share) and the names of the requested metrics that share
the function: metrics computed together (FID, KID, IS and PRC from one pass of Inception features) list the same
function, which then runs once. The maths live in evaluation/metrics.py, imported when a metric runs, so that
reading the table (config validation, --help) stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from .metrics import Result

# What a metric needs besides a generator and real reference digits:
INCEPTION = "Inception weights (torch-fidelity's, or --inception-weights)"
CLASSIFIER = "the MNIST classifier (python -m evaluation.classifier)"
CONDITIONAL = "a conditional generator (model.conditional=true)"
TRAINING_DIGITS = "real digits to train on (the other MNIST split)"


@dataclass(frozen=True)
class Value:
    name: str                  # as logged: eval/<name> in TensorBoard, a key of eval.best_metric
    lower_is_better: bool
    column: str = ""           # its experiments.report column ("": not a column)
    decimals: int | None = None  # fixed decimals in that column (None: 4 significant digits)
    plot: bool = False         # a panel of its own in the report's quality.png (a drift shows in its curve)


@dataclass(frozen=True)
class Metric:
    name: str                  # as requested: --metrics, eval.metrics
    about: str
    values: tuple[Value, ...]
    compute: Callable[[Measurement, list[str]], list[Result]]
    needs: frozenset[str] = frozenset()


@dataclass
class Measurement:
    """What the metrics of one evaluation share. `source`: a Generator (sampled with `seed`; a conditional one is
    asked for balanced_labels) or uint8 real images (a real-vs-real floor). `reference_labels` are the reference
    digits' classes; `training_digits` (uint8 images, labels) are real digits of the other split."""
    source: torch.nn.Module | torch.Tensor
    nz: int
    reference: torch.Tensor
    reference_name: str
    num_samples: int
    device: torch.device
    batch_size: int
    seed: int
    cache_root: Path
    inception_weights: str | None = None
    classifier_weights: str | None = None
    reference_labels: torch.Tensor | None = None
    training_digits: tuple[torch.Tensor, torch.Tensor] | None = None
    _images: torch.Tensor | None = field(default=None, repr=False)

    @property
    def is_generator(self) -> bool:
        import torch
        return isinstance(self.source, torch.nn.Module)

    def images(self) -> torch.Tensor:
        """The samples as uint8 RGB, drawn once for all the metrics that read pixels."""
        if self._images is None:
            from .metrics import generate
            self._images = (generate(self.source, self.nz, self.num_samples, self.seed) if self.is_generator
                            else self.source)
        return self._images

    @property
    def common(self) -> dict:
        return dict(device=self.device, batch_size=self.batch_size, seed=self.seed, cache_root=self.cache_root)


def _inception(m: Measurement, names: list[str]) -> list[Result]:
    from .metrics import FidelityGenerator, inception_metrics
    source = FidelityGenerator(m.source, m.nz) if m.is_generator else m.source
    return inception_metrics(source, m.reference, m.reference_name, names, m.num_samples, m.inception_weights,
                             **m.common)


def _classifier(m: Measurement, names: list[str]) -> list[Result]:
    from .metrics import classifier_metrics
    return classifier_metrics(m.images(), m.reference, m.reference_name, names, m.classifier_weights, **m.common)


def _class(m: Measurement, names: list[str]) -> list[Result]:
    from .classifier import find_weights
    from .metrics import class_metrics
    return class_metrics(m.images(), m.reference, m.reference_labels, m.reference_name,
                         find_weights(m.classifier_weights), **m.common)


def _background(m: Measurement, names: list[str]) -> list[Result]:
    from .metrics import background_gap
    return [background_gap(m.images(), m.reference, m.reference_name)]


def _cas(m: Measurement, names: list[str]) -> list[Result]:
    from .metrics import classification_accuracy_score
    return classification_accuracy_score(m.images(), m.reference, m.reference_labels, m.reference_name,
                                         m.training_digits, m.seed)


HIGHER, LOWER = False, True
METRICS: dict[str, Metric] = {metric.name: metric for metric in (
    Metric("fid", "Frechet Inception distance", (Value("fid", LOWER),), _inception, frozenset({INCEPTION})),
    Metric("kid", "kernel Inception distance", (Value("kid", LOWER),), _inception, frozenset({INCEPTION})),
    Metric("isc", "Inception score", (Value("isc", HIGHER),), _inception, frozenset({INCEPTION})),
    Metric("prc", "precision and recall (Inception features)", (Value("precision", HIGHER), Value("recall", HIGHER)),
           _inception, frozenset({INCEPTION})),
    Metric("clf_fid", "FID with the MNIST classifier's features", (Value("clf_fid", LOWER),), _classifier,
           frozenset({CLASSIFIER})),
    Metric("clf_kid", "KID with the MNIST classifier's features", (Value("clf_kid", LOWER),), _classifier,
           frozenset({CLASSIFIER})),
    Metric("clf_isc", "Inception score with the MNIST classifier", (Value("clf_isc", HIGHER),), _classifier,
           frozenset({CLASSIFIER})),
    Metric("coverage", "classes covered, KL of the class histogram to uniform, share of confident predictions",
           (Value("classes_covered", HIGHER, "classes"), Value("kl_to_uniform", LOWER),
            Value("confident_share", HIGHER)), _classifier, frozenset({CLASSIFIER})),
    Metric("class", "share of samples classified as the digit asked for; per-digit clf_fid",
           (Value("class_accuracy", HIGHER, "class accuracy"), Value("clf_fid_per_class", LOWER)), _class,
           frozenset({CLASSIFIER, CONDITIONAL})),
    Metric("background", "median background of the samples minus the real digits' (a grey drift is > 0)",
           (Value("background_gap", LOWER, "background gap", 3, plot=True),), _background),
    Metric("cas", "classification accuracy score: a classifier trained on the samples, tested on real digits; "
           "cas_real: the same trained on real digits", (Value("cas", HIGHER, "CAS"), Value("cas_real", HIGHER, "CAS ceiling")),
           _cas, frozenset({CONDITIONAL, TRAINING_DIGITS})),
)}
VALUES: dict[str, Value] = {value.name: value for metric in METRICS.values() for value in metric.values}
LOWER_IS_BETTER = {name for name, value in VALUES.items() if value.lower_is_better}


def parse_metrics(text: str, where: str = "--metrics") -> list[str]:
    """The requested metrics of a comma-separated list; an unknown or empty one raises ValueError naming `where`."""
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"{where}: unknown metric '{','.join(unknown) or text}': choose from {', '.join(METRICS)}")
    return metrics


def reported_values(metrics: list[str]) -> list[str]:
    """The names of the values that computing `metrics` reports (what eval.best_metric may choose from)."""
    return [value.name for name in metrics for value in METRICS[name].values]


def needing(metrics: list[str], need: str) -> list[str]:
    return [name for name in metrics if need in METRICS[name].needs]


def help_text() -> str:
    return "; ".join(f"{m.name}: {m.about}" for m in METRICS.values())


def measure(m: Measurement, metrics: list[str]) -> list[Result]:
    """Every requested metric, in the table's order; metrics that share a function are computed by one call."""
    from .common import EvaluationError
    if needing(metrics, CONDITIONAL) and not (m.is_generator and getattr(m.source, "conditional", False)):
        raise EvaluationError(f"metric '{','.join(needing(metrics, CONDITIONAL))}' measures a conditional generator "
                              f"(model.conditional=true); this one draws random digits: leave it out")
    if needing(metrics, CONDITIONAL) and m.reference_labels is None:
        raise EvaluationError("a conditional metric needs the reference's labels (real_labels)")
    if needing(metrics, TRAINING_DIGITS) and m.training_digits is None:
        raise EvaluationError(f"metric '{','.join(needing(metrics, TRAINING_DIGITS))}' needs {TRAINING_DIGITS}")
    rows, done = [], set()
    for name, metric in METRICS.items():
        if name in metrics and metric.compute not in done:
            done.add(metric.compute)
            rows += metric.compute(m, [n for n in METRICS if n in metrics and METRICS[n].compute is metric.compute])
    return rows


def real_vs_real(subject: Measurement, held_out: torch.Tensor, metrics: list[str]) -> list[Result]:
    """`metrics` of real digits of the other split (`held_out`, uint8) against the subject's reference: a
    perfect generator's score at this count, the floor to read a generator's figures beside. No conditional
    metric: real digits are not drawn for a requested class."""
    real = replace(subject, source=held_out, _images=None)
    return measure(real, [m for m in metrics if m not in needing(metrics, CONDITIONAL)])


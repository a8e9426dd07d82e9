"""The metric registry (evaluation/registry.py): each entry computes exactly the values it declares, the commands
read it, and CAS, the metric it was proven with, tells a generator drawing the asked digit from one drawing another."""
import pytest
import torch

from support import DigitLookup, legible_digits, make_mnist
from evaluation.metrics import real_images, real_labels
from evaluation.registry import INCEPTION, LOWER_IS_BETTER, METRICS, VALUES, Measurement, measure, parse_metrics
from dcgan.train.data import load_mnist_labels, load_mnist_uint8, to_training_images

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def legible_root(tmp_path_factory):
    """Digits a classifier learns (support.legible_digits), so that CAS has something to tell apart."""
    return make_mnist(tmp_path_factory.mktemp("legible"), n_train=1000, n_test=500, digits=legible_digits)


def subject(root, generator, classifier, tmp_path, count: int = 500) -> Measurement:
    return Measurement(generator, 16, real_images(root, "test", 28, count), "ref", count, CPU, 100, 0, tmp_path,
                       classifier_weights=str(classifier), reference_labels=real_labels(root, "test", count),
                       training_digits=(real_images(root, "train", 28, count), real_labels(root, "train", count)))


def lookup(root, shift: int) -> DigitLookup:
    return DigitLookup(to_training_images(load_mnist_uint8(root), 28), load_mnist_labels(root), shift)


@pytest.mark.parametrize("name", [n for n, m in METRICS.items() if INCEPTION not in m.needs])
def test_each_metric_reports_exactly_its_registered_values(name, legible_root, tiny_classifier, tmp_path):
    """Computed alone, on a conditional generator, each metric returns one row per value the registry lists for it,
    in that order (Inception metrics need ../shared's weights: tests/test_evaluation.py runs them)."""
    rows = measure(subject(legible_root, lookup(legible_root, 0), tiny_classifier, tmp_path, 100), [name])
    assert [r.metric for r in rows] == [v.name for v in METRICS[name].values]
    assert all(r.value is not None and r.samples == 100 for r in rows)


def test_metrics_that_share_a_computation_run_it_once(legible_root, tiny_classifier, tmp_path, monkeypatch):
    import evaluation.metrics as metrics
    calls = []
    original = metrics.classifier_metrics
    monkeypatch.setattr(metrics, "classifier_metrics", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    rows = measure(subject(legible_root, lookup(legible_root, 0), tiny_classifier, tmp_path, 100),
                   ["coverage", "clf_fid", "background"])
    assert calls == [["clf_fid", "coverage"]]                    # one call, in the registry's order
    assert [r.metric for r in rows] == ["clf_fid", "classes_covered", "kl_to_uniform", "confident_share",
                                        "background_gap"]


def test_the_commands_read_the_registry(capsys):
    from evaluation.measure import main
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(f"{name}: {' '.join(metric.about.split())}" in shown for name, metric in METRICS.items())
    assert parse_metrics("clf_fid, cas") == ["clf_fid", "cas"]
    with pytest.raises(ValueError, match="eval.metrics: unknown metric 'fud': choose from fid, kid"):
        parse_metrics("clf_fid,fud", "eval.metrics")
    assert {"fid", "kid", "clf_fid", "clf_kid", "kl_to_uniform", "clf_fid_per_class"} <= LOWER_IS_BETTER
    assert not {"cas", "class_accuracy", "classes_covered", "isc"} & LOWER_IS_BETTER
    assert len(VALUES) == sum(len(m.values) for m in METRICS.values())     # no value reported by two metrics


@pytest.mark.slow  # four classifiers trained on 500 digits each, ~30 s: the slow tier (CI runs it)
def test_cas_tells_the_asked_digit_from_another(legible_root, tiny_classifier, tmp_path):
    """A generator that draws real digits of the digit asked for scores CAS near its ceiling (the same training on
    real digits); one that draws another digit (asked 3, draws 8) trains a classifier that is wrong on every real
    digit. The ceiling does not depend on the generator."""
    right = {r.metric: r.value for r in measure(subject(legible_root, lookup(legible_root, 0), tiny_classifier,
                                                        tmp_path), ["cas"])}
    wrong = {r.metric: r.value for r in measure(subject(legible_root, lookup(legible_root, 5), tiny_classifier,
                                                        tmp_path), ["cas"])}
    assert right["cas_real"] == wrong["cas_real"] >= 0.9
    assert right["cas"] >= right["cas_real"] - 0.1, right
    assert wrong["cas"] <= 0.1, wrong


def test_cas_needs_a_conditional_generator_and_training_digits(legible_root, tiny_classifier, tmp_path):
    from dcgan.models import Generator
    from evaluation.common import EvaluationError
    plain = subject(legible_root, Generator(28, nz=16, ngf=8), tiny_classifier, tmp_path, 100)
    with pytest.raises(EvaluationError, match="'cas' measures a conditional generator"):
        measure(plain, ["cas"])
    missing = subject(legible_root, lookup(legible_root, 0), tiny_classifier, tmp_path, 100)
    missing.training_digits = None
    with pytest.raises(EvaluationError, match="'cas' needs real digits to train on"):
        measure(missing, ["cas"])

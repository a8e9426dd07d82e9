"""The maths of the metrics of a generator against real MNIST (their table: evaluation/registry.py).

Standard metrics (Inception features): fid, kid, isc, prc. MNIST-domain metrics (our classifier's features,
evaluation/classifier.py): clf_fid, clf_kid, clf_isc, coverage (classes covered, KL of the predicted-class
histogram to uniform, share of confident predictions), and for conditional generators `class`: the share of samples
the classifier assigns to the digit asked for, and the mean over digits of each digit's clf_fid against the real
images of that digit. `background`: the median background (each image's median pixel, median over images, in
[-1, 1]) of the samples minus that of the real images: a grey drift shows as a positive gap. `cas`, the
classification accuracy score (Ravuri & Vinyals 2019): the MNIST classifier's architecture trained on the samples of
a conditional generator, labelled with the digit each was asked for, tested on the real reference digits, beside the
same training on as many real digits (its ceiling). Real images are processed exactly as in training: resized once
to the training resolution, then uint8 and grey tiled to 3 channels, like generated ones.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.generative_model_base import GenerativeModelBase

from dcgan.machinery.checkpoint import CheckpointError, read_weights
from dcgan.train.data import load_mnist_labels, load_mnist_uint8, to_training_images
from dcgan.models import NUM_CLASSES, balanced_labels

from .classifier import find_weights, fit_classifier, load_classifier, prepare, register_extractor, sha256_prefix
from .common import EvaluationError

CONFIDENT = 0.9  # max softmax probability for a "confidently classified" sample


@dataclass
class Result:
    metric: str
    value: float | None      # None: unavailable (see note)
    samples: int
    reference: str
    weights: str
    seconds: float
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats (N, 1, H, W) -> uint8 (N, 3, H, W), the format torch-fidelity expects."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)


class FidelityGenerator(GenerativeModelBase):
    """A trained Generator behind torch-fidelity's generative-model interface: samples stream batch by batch."""

    def __init__(self, generator: torch.nn.Module, nz: int):
        super().__init__()
        self.generator = generator.eval()
        self._nz = nz

    @property
    def z_size(self):
        return self._nz

    @property
    def z_type(self):
        return "normal"

    @property
    def num_classes(self):
        return 0

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        device = next(self.generator.parameters()).device
        return to_uint8_rgb(self.generator(z.to(device)))


class ImageTensors(Dataset):
    """uint8 (N, 3, H, W) in memory, as a torch-fidelity input."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


def real_images(root: str | Path, split: str, image_size: int, count: int, offset: int = 0) -> torch.Tensor:
    """MNIST `split` images offset..offset+count, processed exactly as the training images, as uint8 RGB."""
    digits = load_mnist_uint8(root, train=split == "train")
    if offset + count > len(digits):
        raise EvaluationError(f"MNIST {split} has {len(digits)} images; {offset + count} were asked for "
                              f"(lower --num-samples)")
    return to_uint8_rgb(to_training_images(digits[offset:offset + count], image_size))


def real_labels(root: str | Path, split: str, count: int, offset: int = 0) -> torch.Tensor:
    """The digit classes of real_images(root, split, ..., count, offset)."""
    return load_mnist_labels(root, train=split == "train")[offset:offset + count]


@torch.no_grad()
def generate(generator: torch.nn.Module, nz: int, count: int, seed: int, batch_size: int = 500) -> torch.Tensor:
    """`count` samples as uint8 RGB; a conditional generator is asked for balanced_labels(count) (0-9 in turn)."""
    device = next(generator.parameters()).device
    generator.eval()
    rng = torch.Generator().manual_seed(seed)
    labels = balanced_labels(count, device)
    chunks = [to_uint8_rgb(generator(torch.randn(min(batch_size, count - i), nz, generator=rng).to(device),
                                     labels[i:i + batch_size])).cpu()
              for i in range(0, count, batch_size)]
    return torch.cat(chunks)


def read_inception_weights(path: str) -> dict:
    """The Inception weights file, read as data before torch-fidelity loads it: a file that would run code, or
    one that is not a state_dict, is a one-line EvaluationError."""
    try:
        state = read_weights(Path(path))
    except CheckpointError as exc:
        raise EvaluationError(f"--inception-weights: {exc}") from None
    if not isinstance(state, dict):
        raise EvaluationError(f"--inception-weights: {path} is not a state_dict of torch-fidelity's InceptionV3")
    return state


def inception_weights_problem(path: str | None) -> str:
    """Why IS cannot be computed with this weights file ('' when it can)."""
    if not path:
        return ""
    weight = read_inception_weights(path).get("fc.weight")
    if weight is None:
        return f"unavailable: {Path(path).name} has no classifier layer (fc.weight)"
    if not torch.isfinite(weight).all():
        return f"unavailable: {Path(path).name} has a NaN classifier layer (fc.weight); IS needs the full weights"
    return ""


def _fidelity(input1, reference: torch.Tensor, cache_name: str, wanted: dict, num_samples: int, seed: int,
              device: torch.device, batch_size: int, cache_root: Path, **extra) -> dict:
    # The reference's statistics are cached under its name plus a hash of its pixels: the same name from another
    # data root (or a test's small fake MNIST) must not reuse them.
    content = hashlib.sha256(memoryview(reference.contiguous().numpy())).hexdigest()[:8]  # no copy: ~0.2 s at 10k
    kwargs = dict(input1=input1, input2=ImageTensors(reference), input2_cache_name=f"{cache_name}-r{content}",
                  cuda=device.type == "cuda", batch_size=batch_size, rng_seed=seed, verbose=False,
                  cache_root=str(cache_root), kid_subset_size=max(2, min(1000, num_samples, len(reference))),
                  save_cpu_ram=True, **wanted, **extra)
    if isinstance(input1, GenerativeModelBase):
        kwargs["input1_model_num_samples"] = num_samples
    return torch_fidelity.calculate_metrics(**kwargs)


def _rows(raw: dict, names: dict, samples: int, reference: str, weights: str, seconds: float) -> list[Result]:
    keys = {"fid": ["frechet_inception_distance"], "kid": ["kernel_inception_distance_mean"],
            "isc": ["inception_score_mean"], "prc": ["precision", "recall"]}
    rows = []
    for ours, theirs in names.items():
        for key in keys[theirs]:
            metric = ours if theirs != "prc" else f"{ours.replace('prc', '')}{key}"
            rows.append(Result(metric, float(raw[key]), samples, reference, weights, seconds))
    return rows


def inception_metrics(source, reference: torch.Tensor, reference_name: str, metrics: list[str], num_samples: int,
                      weights_path: str | None, device: torch.device, batch_size: int, seed: int,
                      cache_root: Path) -> list[Result]:
    """Standard metrics (fid, kid, isc, prc of `metrics`), from one pass of Inception features. `source`: a
    FidelityGenerator (streamed) or uint8 images (for real-vs-real floors)."""
    wanted = list(metrics)
    weights = Path(weights_path).name if weights_path else "torch-fidelity default (downloaded)"
    rows = []
    if weights_path and "isc" not in wanted:  # with isc, inception_weights_problem reads it
        read_inception_weights(weights_path)  # refused here if it would run code, before torch-fidelity loads it
    if "isc" in wanted and (problem := inception_weights_problem(weights_path)):
        rows.append(Result("isc", None, num_samples, reference_name, weights, 0.0, problem))
        wanted.remove("isc")
    if not wanted:
        return rows
    tag = f"-w{sha256_prefix(weights_path)}" if weights_path else ""
    start = time.time()
    source = source if isinstance(source, GenerativeModelBase) else ImageTensors(source)
    raw = _fidelity(source, reference, f"{reference_name}{tag}", {m: True for m in wanted},
                    num_samples, seed, device, batch_size, cache_root, feature_extractor_weights_path=weights_path)
    rows += _rows(raw, {m: m for m in wanted}, num_samples, reference_name, weights, time.time() - start)
    for row in rows:  # torch-fidelity's own weights file (the hub cache) may lack the classifier layer too
        if row.metric == "isc" and row.value is not None and math.isnan(row.value):
            row.value = None
            row.note = "unavailable: these weights give a NaN score (no classifier layer); IS needs the full weights"
    return rows


def coverage(logits: torch.Tensor) -> dict:
    """Predicted-class histogram of generated digits: mode collapse shows here first."""
    probs = logits.float().softmax(1)
    share = torch.bincount(probs.argmax(1), minlength=10).float() / len(probs)
    kl = (share[share > 0] * (share[share > 0] / 0.1).log()).sum().item()
    return {"classes_covered": int((share >= 0.01).sum()),   # a class counts from 1% of the samples
            "kl_to_uniform": kl,
            "confident_share": (probs.max(1).values >= CONFIDENT).float().mean().item(),
            "histogram": [round(v, 4) for v in share.tolist()]}


def classifier_metrics(fake: torch.Tensor, reference: torch.Tensor, reference_name: str, metrics: list[str],
                       weights_path: str | None, device: torch.device, batch_size: int, seed: int,
                       cache_root: Path) -> list[Result]:
    """MNIST-domain metrics (clf_fid, clf_kid, clf_isc, coverage of `metrics`) on generated uint8 images `fake`
    (kept in memory: 10k at 64 px is 120 MB)."""
    wanted = list(metrics)
    path = find_weights(weights_path)
    weights = path.name
    rows = []
    fidelity = [m[len("clf_"):] for m in wanted if m.startswith("clf_")]
    if fidelity:
        start = time.time()
        raw = _fidelity(ImageTensors(fake), reference, f"{reference_name}-clf{sha256_prefix(path)}",
                        {m: True for m in fidelity}, len(fake), seed, device, batch_size, cache_root,
                        feature_extractor=register_extractor(), feature_extractor_weights_path=str(path))
        rows += _rows(raw, {f"clf_{m}": m for m in fidelity}, len(fake), reference_name, weights, time.time() - start)
    if "coverage" in wanted:
        start = time.time()
        stats = coverage(classify(fake, path, device))
        seconds = time.time() - start
        histogram = " ".join(f"{v:.2f}" for v in stats["histogram"])
        for name in ("classes_covered", "kl_to_uniform", "confident_share"):
            rows.append(Result(name, float(stats[name]), len(fake), reference_name, weights, seconds,
                               f"class shares 0-9: {histogram}" if name == "classes_covered" else ""))
    return rows


@torch.no_grad()
def classify(images: torch.Tensor, weights: Path, device: torch.device) -> torch.Tensor:
    """The classifier's logits (N, 10) for uint8 RGB images."""
    model = load_classifier(weights, device)
    return torch.cat([model(prepare(images[i:i + 1000].to(device)))[1].cpu() for i in range(0, len(images), 1000)])


def class_metrics(fake: torch.Tensor, reference: torch.Tensor, reference_labels: torch.Tensor | None,
                  reference_name: str, weights: Path, device: torch.device, batch_size: int, seed: int,
                  cache_root: Path) -> list[Result]:
    """A conditional generator's: class_accuracy (samples classified as the digit asked for) and clf_fid_per_class
    (each digit's samples against the reference's images of that digit, clf_fid averaged over the digits)."""
    if reference_labels is None:
        raise EvaluationError("metric 'class' needs the reference's labels (evaluation passes them; see measure)")
    check_class_counts(reference_labels, len(fake))
    start = time.time()
    asked = balanced_labels(len(fake))
    accuracy = (classify(fake, weights, device).argmax(1) == asked).float().mean().item()
    per_class = []
    for digit in range(NUM_CLASSES):
        real = reference[reference_labels == digit]
        raw = _fidelity(ImageTensors(fake[asked == digit]), real, f"{reference_name}-digit{digit}-clf{sha256_prefix(weights)}",
                        {"fid": True}, int((asked == digit).sum()), seed, device, batch_size, cache_root,
                        feature_extractor=register_extractor(), feature_extractor_weights_path=str(weights))
        per_class.append(float(raw["frechet_inception_distance"]))
    seconds = time.time() - start
    shown = " ".join(f"{v:.1f}" for v in per_class)
    return [Result("class_accuracy", accuracy, len(fake), reference_name, weights.name, seconds),
            Result("clf_fid_per_class", sum(per_class) / len(per_class), len(fake), reference_name, weights.name,
                   seconds, f"clf_fid of digits 0-9: {shown}")]


def check_class_counts(reference_labels: torch.Tensor, count: int) -> None:
    """clf_fid_per_class compares each digit's samples with the reference's images of that digit: a covariance
    needs at least 2 of each, else a one-line error naming the digit."""
    real = torch.bincount(reference_labels, minlength=NUM_CLASSES)
    drawn = torch.bincount(balanced_labels(count), minlength=NUM_CLASSES)
    for digit in range(NUM_CLASSES):
        if min(real[digit], drawn[digit]) < 2:
            raise EvaluationError(f"metric 'class' needs at least 2 samples and 2 reference images of each digit; "
                                  f"{count} samples give {int(drawn[digit])} {digit}s and the reference has "
                                  f"{int(real[digit])}: raise --num-samples (eval.num_samples in training)")


def median_background(images: torch.Tensor) -> float:
    """The median over images of each image's median pixel, for uint8 images, in [-1, 1] (MNIST: -1, black)."""
    return images[:, 0].flatten(1).float().median(dim=1).values.median().item() / 127.5 - 1


def background_gap(fake: torch.Tensor, reference: torch.Tensor, reference_name: str) -> Result:
    start = time.time()
    fake_level, real_level = median_background(fake), median_background(reference)
    return Result("background_gap", fake_level - real_level, len(fake), reference_name, "-", time.time() - start,
                  f"median background {fake_level:+.4f} (real {real_level:+.4f})")


# The training of CAS's classifiers, the same for the samples and for the real digits of the ceiling: passes over
# the samples, in small batches so that a few hundred samples still make a few hundred steps.
CAS_EPOCHS, CAS_BATCH = 10, 32


def classification_accuracy_score(fake: torch.Tensor, reference: torch.Tensor, reference_labels: torch.Tensor,
                                  reference_name: str, training_digits: tuple[torch.Tensor, torch.Tensor],
                                  seed: int) -> list[Result]:
    """cas: the test accuracy on the reference digits of the MNIST classifier's architecture trained only on
    `fake` (drawn for balanced_labels), each labelled with the digit it was asked for; cas_real: the same training
    on as many real digits of `training_digits` (its ceiling at this count). Samples that look right but lack a
    class's variety score high on class accuracy and low here."""
    start = time.time()
    count = len(fake)
    real, real_labels = training_digits[0][:count], training_digits[1][:count]
    _, cas = fit_classifier(fake, balanced_labels(count), reference, reference_labels, CAS_EPOCHS, CAS_BATCH, seed)
    _, ceiling = fit_classifier(real, real_labels, reference, reference_labels, CAS_EPOCHS, CAS_BATCH, seed)
    seconds = time.time() - start
    trained = f"trained {CAS_EPOCHS} epochs on {count}"
    return [Result("cas", cas, count, reference_name, "-", seconds,
                   f"{trained} generated digits, tested on {len(reference)} real ones"),
            Result("cas_real", ceiling, count, reference_name, "-", seconds,
                   f"the ceiling: {trained} real digits of the other split")]

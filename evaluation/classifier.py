"""A small MNIST classifier: the judge for MNIST-domain metrics (Inception features are a poor judge of digits).

    python -m evaluation.classifier --data-root data            # trains (~2 CPU minutes), >= 99% test accuracy

The weights go to the cache directory as mnist-classifier-<sha256 prefix>.pt (the prefix is checked on load,
as torch.hub does). `register_extractor()` makes the classifier torch-fidelity's feature extractor
"mnist-classifier": `features` (128-d penultimate layer) for FID/KID/PRC, `logits_unbiased` for IS.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from dcgan.machinery.checkpoint import CheckpointError, read_weights
from dcgan.train.data import DataError, load_mnist_labels, load_mnist_uint8

from .common import EvaluationError, cache_dir

EXTRACTOR_NAME = "mnist-classifier"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FILE_PREFIX = "mnist-classifier-"


class MnistClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, 1, 28, 28) normalized -> (features (N, 128), logits (N, 10))."""
        features = self.body(x)
        return features, self.head(self.dropout(features))


def prepare(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W), any size, grey or tiled to 3 channels -> normalized (N, 1, 28, 28) floats."""
    x = images_uint8[:, :1].float() / 255.0
    if x.shape[-1] != 28:
        x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    return (x - MNIST_MEAN) / MNIST_STD


def sha256_prefix(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]


def find_weights(path: str | Path | None = None) -> Path:
    """An explicit path, else the newest mnist-classifier-*.pt in the cache directory."""
    if path:
        path = Path(path)
        if not path.is_file():
            raise EvaluationError(f"classifier weights {path} do not exist")
        return path
    found = sorted(cache_dir().glob(f"{FILE_PREFIX}*.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise EvaluationError(f"no MNIST classifier in {cache_dir()}: train one with "
                              f"`python -m evaluation.classifier --data-root DATA` (a few CPU minutes)")
    return found[-1]


def load_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> MnistClassifier:
    path = find_weights(path)
    expected = path.stem[len(FILE_PREFIX):] if path.stem.startswith(FILE_PREFIX) else None
    if expected and sha256_prefix(path) != expected:
        raise EvaluationError(f"classifier weights {path} are corrupt (sha256 does not start with {expected}); retrain")
    try:
        state = read_weights(path)  # data only: a file that would run code is refused
    except CheckpointError as exc:
        raise EvaluationError(str(exc)) from None
    model = MnistClassifier()
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise EvaluationError(f"{path} is not an MNIST classifier of this project ({type(exc).__name__})") from None
    return model.to(device).eval()


class MnistClassifierExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor: uint8 (N, 3, H, W) -> features / logits of the MNIST classifier."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.model = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return "features", "logits", "logits_unbiased"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

    def forward(self, x):
        device = next(self.model.parameters()).device
        features, logits = self.model(prepare(x.to(device)))
        named = {"features": features, "logits": logits, "logits_unbiased": logits}
        return tuple(named[name].float() for name in self.features_list)


def register_extractor() -> str:
    """Make the classifier known to torch-fidelity as feature extractor EXTRACTOR_NAME (once); returns the name."""
    if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EXTRACTOR_NAME, MnistClassifierExtractor)
    return EXTRACTOR_NAME


def as_batch(images: torch.Tensor) -> torch.Tensor:
    """MNIST's (N, 28, 28) digits as (N, 1, 28, 28); (N, C, H, W) images as they are."""
    return images.unsqueeze(1) if images.dim() == 3 else images


@torch.no_grad()
def accuracy(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Test accuracy on uint8 images: (N, 28, 28) digits or (N, C, H, W) of any size."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        _, logits = model(prepare(as_batch(images[start:start + batch])))
        correct += (logits.argmax(1) == labels[start:start + batch]).sum().item()
    return correct / len(images)


def train_classifier(root: str | Path, epochs: int = 3, batch_size: int = 128, seed: int = 0,
                     log=print) -> tuple[MnistClassifier, float]:
    """Train on MNIST train, return (model, test accuracy)."""
    return fit_classifier(load_mnist_uint8(root, train=True), load_mnist_labels(root, train=True),
                          load_mnist_uint8(root, train=False), load_mnist_labels(root, train=False), epochs,
                          batch_size, seed, log)


def fit_classifier(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   epochs: int = 3, batch_size: int = 128, seed: int = 0,
                   log=lambda *_: None) -> tuple[MnistClassifier, float]:
    """A fresh MnistClassifier trained on uint8 images train_x ((N, 28, 28) digits or (N, C, H, W) of any size)
    with small random shifts; returns (model, accuracy on test_x)."""
    torch.manual_seed(seed)
    batch_size = min(batch_size, len(train_x))
    # channels_last: oneDNN's convolutions (forward and backward) run ~15% faster on a CPU in this layout.
    model = MnistClassifier().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * (len(train_x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train_x))
        start = time.time()
        for i in range(len(train_x) // batch_size):
            index = perm[i * batch_size:(i + 1) * batch_size]
            x = prepare(as_batch(train_x[index]))
            dx, dy = torch.randint(-2, 3, (2,)).tolist()  # shift augmentation: generated digits are not centred
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3)).contiguous(memory_format=torch.channels_last)
            _, logits = model(x)
            loss = F.cross_entropy(logits, train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log(f"epoch {epoch + 1}/{epochs}: test accuracy {accuracy(model, test_x, test_y):.4f} ({time.time() - start:.0f} s)")
    return model.eval(), accuracy(model, test_x, test_y)


def save_classifier(model: MnistClassifier, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{FILE_PREFIX}tmp{os.getpid()}.pt"
    torch.save(model.state_dict(), tmp)
    final = folder / f"{FILE_PREFIX}{sha256_prefix(tmp)}.pt"
    os.replace(tmp, final)
    return final


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw/ (default: data)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out-dir", default=None, help=f"where to save (default: the cache dir, {cache_dir()})")
    parser.add_argument("--min-accuracy", type=float, default=0.99, help="refuse to save below this test accuracy")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        model, acc = train_classifier(args.data_root, epochs=args.epochs)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if acc < args.min_accuracy:
        print(f"error: test accuracy {acc:.4f} is below --min-accuracy {args.min_accuracy}; not saved "
              f"(train longer with --epochs)", file=sys.stderr)
        return 1
    path = save_classifier(model, Path(args.out_dir) if args.out_dir else cache_dir())
    print(f"test accuracy {acc:.4f}; saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

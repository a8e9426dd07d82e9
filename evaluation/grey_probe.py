"""Is a run's background drifting grey, and can its D see that? Reads one checkpoint (a run dir: its latest).

    python -m evaluation.grey_probe --checkpoint runs/000-mnist64 --data-root data

Prints the background (per-image median pixel) and stroke (per-image 99th percentile) levels of G's and the EMA's
samples in [-1, 1] (real digits: -1 and ~+1), then D's mean probability of "real" for real test digits as they
are and with their black lifted to L/255: as training shows images to D by default (a batch of reals, a separate
batch of fakes: BatchNorm normalizes each on its own), and as one joint batch (loss.joint_batch), both with D's
BatchNorm in training mode as in a training step. Then what the MNIST classifier (the judge of clf_fid and
coverage) reads in real test digits with their black lifted to L/255, and in the EMA's samples with pixels darker
than L/255 set to black: a grey background alone makes it read every digit as one class, which says whether a run
that "covers 2 classes" collapsed or only has a grey background.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dcgan.machinery.checkpoint import CheckpointError, load_checkpoint
from dcgan.train.data import DataError, load_mnist_uint8, to_training_images
from dcgan.loading import build_discriminator, generator_from
from evaluation.classifier import find_weights, load_classifier
from evaluation.common import EvaluationError
from evaluation.measure import checkpoints_to_evaluate
from evaluation.metrics import classify, coverage, generate, to_uint8_rgb

JUDGED = 1000  # real digits and samples the classifier reads at each level (a class counts from 1% of them)


def lift_black(images: torch.Tensor, level: int) -> torch.Tensor:
    """[-1, 1] images with black raised to level/255 and white kept: a uniform grey background."""
    return -1 + (images + 1) * (1 - level / 255) + 2 * level / 255


@torch.no_grad()
def levels(generator: torch.nn.Module, nz: int, count: int = 1000) -> tuple[float, float]:
    x = generator(torch.randn(count, nz, generator=torch.Generator().manual_seed(0))).flatten(1).float()
    return x.median(1).values.mean().item(), x.quantile(0.99, dim=1).mean().item()


@torch.no_grad()
def d_real_probability(D: torch.nn.Module, real: torch.Tensor, other: torch.Tensor, joint: bool) -> tuple[float, float]:
    D.train()  # batch statistics, as in a training step
    if joint:
        real_logits, other_logits = D(torch.cat([real, other])).split(len(real))
    else:
        real_logits, other_logits = D(real), D(other)
    return torch.sigmoid(real_logits).mean().item(), torch.sigmoid(other_logits).mean().item()


def blacken(images: torch.Tensor, level: int) -> torch.Tensor:
    """uint8 images with every pixel darker than level/255 set to black: a background below it removed."""
    return images.masked_fill(images < level, 0)


def judge(path: str | None) -> Path | None:
    """The classifier's weights, checked to load: `path` (missing or not a classifier: an EvaluationError), else
    the cached classifier, else None."""
    if not path:
        try:
            path = find_weights(None)
        except EvaluationError:
            return None
    load_classifier(path)
    return Path(path)


def reading(images: torch.Tensor, weights: Path) -> str:
    """The classifier's reading of uint8 images: classes covered, and the top class with its share."""
    stats = coverage(classify(images, weights, torch.device("cpu")))
    shares, covered = torch.tensor(stats["histogram"]), stats["classes_covered"]
    return f"{covered} class{'es' if covered != 1 else ''}, top {shares.argmax().item()} at {shares.max().item():.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint) or a ckpt-*.pt")
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw/ (default: data)")
    parser.add_argument("--levels", default="16,32,64", help="backgrounds to try, in 1/255 (default: 16,32,64)")
    parser.add_argument("--batch-size", type=int, default=128, help="D's batch of real digits (default: 128)")
    parser.add_argument("--classifier-weights", help="the MNIST classifier (default: the newest in the cache, as "
                        "evaluation.fid uses; without one its part is skipped)")
    args = parser.parse_args(argv)
    try:
        path = checkpoints_to_evaluate(args.checkpoint, every=False)[0]
        state = load_checkpoint(path)  # read once: G, its EMA and D come from the same file
        G, ema = generator_from(state, False, path), generator_from(state, True, path)
        config, step = state["config"], state["step"]
        size, nz = config["data"]["image_size"], config["model"]["nz"]
        D = build_discriminator(config, state["discriminator"], path)
        test_digits = load_mnist_uint8(args.data_root, train=False)
        real = to_training_images(test_digits[:args.batch_size], size, torch.device("cpu"))
        weights = judge(args.classifier_weights)
    except (CheckpointError, DataError, EvaluationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path} (step {step}): samples in [-1, 1], background = median pixel, stroke = 99th percentile")
    for name, net in (("G", G), ("EMA", ema)):
        background, stroke = levels(net, nz)
        print(f"  {name:3} background {background:+.3f} stroke {stroke:+.3f}")
    print(f"D's mean P(real) for {len(real)} real test digits vs the same digits with black lifted to L/255:")
    for level in (int(v) for v in args.levels.split(",")):
        lifted = lift_black(real, level)
        for joint in (False, True):
            p_real, p_lifted = d_real_probability(D, real, lifted, joint)
            batches = "one joint batch  " if joint else "separate batches"
            print(f"  L={level:3d} {batches}: real {p_real:.3f} lifted {p_lifted:.3f}")
    if weights is None:
        print("The classifier's reading is skipped: no classifier (python -m evaluation.classifier trains it)")
        return 0
    judged = to_training_images(test_digits[:JUDGED], size, torch.device("cpu"))
    samples = generate(ema, nz, JUDGED, seed=0)
    print(f"The classifier ({weights.name}): {JUDGED} real test digits with black lifted to L/255, and {JUDGED} EMA "
          f"samples with pixels darker than L/255 set to black:")
    for level in (0, *(int(v) for v in args.levels.split(","))):
        print(f"  L={level:3d} real digits: {reading(to_uint8_rgb(lift_black(judged, level)), weights)}; "
              f"EMA samples: {reading(blacken(samples, level), weights)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

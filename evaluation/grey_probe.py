"""Is a run's background drifting grey, and can its D see that? Reads one checkpoint (a run dir: its latest).

    python -m evaluation.grey_probe --checkpoint runs/000-mnist64 --data-root data

Prints the background (per-image median pixel) and stroke (per-image 99th percentile) levels of G's and the EMA's
samples in [-1, 1] (real digits: -1 and ~+1), then D's mean probability of "real" for real test digits as they
are and with their black lifted to L/255: as training shows images to D by default (a batch of reals, a separate
batch of fakes: BatchNorm normalizes each on its own), and as one joint batch (loss.joint_batch), both with D's
BatchNorm in training mode as in a training step.
"""
from __future__ import annotations

import argparse
import sys

import torch

from dcgan.checkpoint import CheckpointError, load_checkpoint
from dcgan.data import DataError, load_mnist_uint8, to_training_images
from dcgan.loading import build_discriminator, generator_from
from evaluation.common import EvaluationError
from evaluation.fid import checkpoints_to_evaluate


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint) or a ckpt-*.pt")
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw/ (default: data)")
    parser.add_argument("--levels", default="16,32,64", help="backgrounds to try, in 1/255 (default: 16,32,64)")
    parser.add_argument("--batch-size", type=int, default=128, help="D's batch of real digits (default: 128)")
    args = parser.parse_args(argv)
    try:
        path = checkpoints_to_evaluate(args.checkpoint, every=False)[0]
        state = load_checkpoint(path)  # read once: G, its EMA and D come from the same file
        G, ema = generator_from(state, False, path), generator_from(state, True, path)
        config, step = state["config"], state["step"]
        size, nz = config["data"]["image_size"], config["model"]["nz"]
        D = build_discriminator(config, state["discriminator"], path)
        real = to_training_images(load_mnist_uint8(args.data_root, train=False)[:args.batch_size], size,
                                  torch.device("cpu"))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

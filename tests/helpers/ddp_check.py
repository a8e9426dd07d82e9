"""Run under torchrun: train, then save what every process ended with, for the test to compare.

    torchrun --standalone --nproc_per_node 2 tests/helpers/ddp_check.py OUT_PREFIX key=value ...

Each process writes OUT_PREFIX.rank<R>.pt: its models (flattened), its data shard of epoch 0 and the world
size it ran in. The comparison happens in the test, after torchrun has exited: opening a second process group
here, after train() destroyed its own, can pick up the old group's stale addresses from torchrun's store.
"""
import os
import sys

import torch

from dcgan.config import load_config
from dcgan.train.data import epoch_indices, load_mnist_uint8
from dcgan.train.run import train


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten().cpu() for t in list(module.parameters()) + list(module.buffers())])


def main(out_prefix: str, overrides: list[str]) -> None:
    cfg = load_config(None, overrides)
    result = train(cfg)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    shard = epoch_indices(len(load_mnist_uint8(cfg.data.root)), cfg.train.batch_size, rank, world, cfg.train.seed,
                          epoch=0)
    torch.save({"world_size": world, "step": result.step, "shard": shard,
                **{name: flat(getattr(result, name)) for name in ("generator", "discriminator", "ema")}},
               f"{out_prefix}.rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

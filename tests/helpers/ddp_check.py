"""Run under torchrun: train, then compare every process's models and data shards with the others'.

    torchrun --standalone --nproc_per_node 2 tests/helpers/ddp_check.py OUT.json key=value ...
"""
import json
import sys

import torch
import torch.distributed as dist

from dcgan.config import load_config
from dcgan.data import epoch_indices, load_mnist_uint8
from dcgan.training import train


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten().cpu() for t in list(module.parameters()) + list(module.buffers())])


def main(out_path: str, overrides: list[str]) -> None:
    cfg = load_config(None, overrides)
    result = train(cfg)
    # train() ends by destroying its process group (Accelerator.end_training); open a new one to compare.
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()  # the job really is distributed
    report = {"world_size": world, "step": result.step}
    for name in ("generator", "discriminator", "ema"):
        mine = flat(getattr(result, name))
        everyone = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(everyone, mine)
        report[f"{name}_max_diff"] = max((t - everyone[0]).abs().max().item() for t in everyone)
    num_images = len(load_mnist_uint8(cfg.data.root))
    shard = epoch_indices(num_images, cfg.train.batch_size, rank, world, cfg.train.seed, epoch=0)
    shards = [torch.empty_like(shard) for _ in range(world)]
    dist.all_gather(shards, shard)
    everything = torch.cat([s.flatten() for s in shards])
    report["shards_disjoint"] = len(set(everything.tolist())) == everything.numel()
    report["shard_shapes"] = [list(s.shape) for s in shards]
    if rank == 0:
        with open(out_path, "w") as fh:
            json.dump(report, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

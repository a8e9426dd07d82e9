"""Run under torchrun: synchronized BatchNorm on 2 processes x half a batch == BatchNorm2d on the whole batch
(outputs, input gradients, summed weight gradients, running statistics).

    torchrun --standalone --nproc_per_node 2 tests/helpers/syncbn_check.py OUT.json cpu|cuda

cpu checks our AllReduceBatchNorm2d; cuda checks torch.nn.SyncBatchNorm, as dcgan.machinery.sync_batchnorm picks them.
Collectives go through gloo, which takes CUDA tensors and, unlike NCCL, lets two processes share one GPU.
"""
import copy
import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from dcgan.machinery.sync_batchnorm import convert_sync_batchnorm


def main(out_path: str, device: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)                                  # the same batch and weights on every process
    x = torch.randn(16, 8, 6, 6, device=device) * 3 + 1
    target = torch.randn_like(x)
    bn = nn.Sequential(nn.BatchNorm2d(8)).to(device)
    with torch.no_grad():
        bn[0].weight.uniform_(0.5, 1.5)
        bn[0].bias.uniform_(-0.5, 0.5)
    synced = convert_sync_batchnorm(copy.deepcopy(bn), use_cuda_sync_bn=device == "cuda")

    x_full = x.clone().requires_grad_(True)
    y_full = bn(x_full)                                   # reference: one process, the whole batch
    (y_full * target).sum().backward()

    part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    x_part = x[part].clone().requires_grad_(True)
    y_part = synced(x_part)
    (y_part * target[part]).sum().backward()              # the whole loss is the sum of the processes' parts
    weight_grad = synced[0].weight.grad.clone()
    dist.all_reduce(weight_grad)

    report = {"world_size": world, "synced_type": type(synced[0]).__name__,
              "output_max_diff": (y_part - y_full[part]).abs().max().item(),
              "input_grad_max_diff": (x_part.grad - x_full.grad[part]).abs().max().item(),
              "weight_grad_max_diff": (weight_grad - bn[0].weight.grad).abs().max().item(),
              "running_var_max_diff": (synced[0].running_var - bn[0].running_var).abs().max().item()}
    if rank == 0:
        with open(out_path, "w") as fh:
            json.dump(report, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

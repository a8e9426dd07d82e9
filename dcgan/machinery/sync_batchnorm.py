"""Synchronized BatchNorm: batch statistics over the global batch, not each process's shard.

On CUDA this is torch.nn.SyncBatchNorm. torch refuses that module on CPU/gloo, so on CPU we use
AllReduceBatchNorm2d, which computes the same statistics with an autograd-aware all-reduce: its backward
all-reduces the gradients of the statistics, exactly like SyncBatchNorm's, so N processes x batch B/N train
like 1 process x batch B. (torch.distributed.nn.functional.all_reduce does the same but is deprecated
since torch 2.14; the ten lines of _AllReduceSum keep us off private APIs.)
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """y = sum over processes of x. Every process's loss depends on every x, so dL/dx is the sum of the
    processes' gradients with respect to y: the backward is an all-reduce too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are summed over all processes (any backend)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        x32 = x.float()  # statistics in fp32, as SyncBatchNorm does under autocast
        local_count = torch.full((1,), x.numel() // channels, dtype=torch.float32, device=x.device)
        # One collective carries count, sum and sum of squares.
        stats = torch.cat([local_count, x32.sum(dim=(0, 2, 3)), (x32 * x32).sum(dim=(0, 2, 3))])
        stats = _AllReduceSum.apply(stats)
        count, total, total_sq = stats[0], stats[1:1 + channels], stats[1 + channels:]
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)  # biased, used to normalize
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp_min(1.0))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = (1, channels, 1, 1)
        y = (x32 - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, use_cuda_sync_bn: bool) -> nn.Module:
    """Replace every BatchNorm2d in `module` by its synchronized counterpart (keeps weights and buffers)."""
    if use_cuda_sync_bn:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats, device=child.weight.device)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced)
        else:
            convert_sync_batchnorm(child, use_cuda_sync_bn)
    return module


"""A whole training step captured once as a CUDA graph and replayed: for steps bound by kernel launches.

At batch 128 the 64x64 DCGAN's step is ~370 small kernels. On an H100 they keep the GPU busy for ~2.6 ms of a
~12 ms step; the rest is the GPU waiting for Python and kernel launches (BENCHMARKS.md, bench.profile_step).
Replaying a captured graph launches the same kernels with one call.

What capture needs, and where the trainer arranges it:
- no host sync inside the step: Adam is fused or `capturable`, so the fp16 loss scaler's step and update stay
  on the GPU (dcgan.train.step.build_gan_step);
- fixed shapes and addresses: each call's inputs are copied into the graph's own input tensors, and the
  returned stats are the graph's output, overwritten by the next call;
- warm-up steps before capture: cuDNN autotuning, optimizer state and the loss scale are created lazily;
- one process: the NCCL all-reduces of DDP and SyncBatchNorm are not captured (the trainer checks this).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

Step = Callable[..., Any]  # tensors in (real, labels, z), tensors out (dcgan.train.step.StepStats)


class GraphedStep:
    """`step(*inputs) -> StepStats`, run eagerly for the first `warmup_steps` calls and as a CUDA graph after.

    Every call is exactly one training step on its own arguments: the warm-up steps are real steps, and the
    call that captures the graph (capture records kernels without running them) then replays it once.
    """

    def __init__(self, step: Step, warmup_steps: int = 3):
        self.step, self.warmup_steps = step, warmup_steps
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.output = None

    def __call__(self, *inputs: torch.Tensor):
        if self.graph is None:
            if self.eager_steps < self.warmup_steps:
                self.eager_steps += 1
                return self.step(*inputs)
            self.capture(*inputs)
        for static, new in zip(self.inputs, inputs):
            static.copy_(new)
        self.graph.replay()
        return self.output

    def capture(self, *inputs: torch.Tensor) -> None:
        self.inputs = tuple(x.clone() for x in inputs)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self.step(*self.inputs)

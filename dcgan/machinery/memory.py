"""Peak memory of this process, as runs and benchmarks report it."""
from __future__ import annotations

import resource

import torch


def peak_memory(device: torch.device) -> tuple[str, float]:
    """(what was measured, MiB): peak CUDA allocation on a GPU, the process's peak resident memory on a CPU."""
    if device.type == "cuda":
        return "CUDA memory allocated", torch.cuda.max_memory_allocated(device) / 2**20
    return "process RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10

"""Stopping cleanly when a scheduler asks: SIGTERM (preemption, `scontrol requeue`, `kill`) or SIGUSR1
(`sbatch --signal=USR1@...` shortly before the time limit).

The handler only sets a flag. After each step the processes agree whether any of them got a signal, so
all of them stop after the same step, write one checkpoint and exit; a requeued job resumes from it.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self, distributed: bool):
        self.signal_name: str | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        # A CPU (gloo) group for the one-integer vote: no GPU stream sync, whatever the training backend.
        self._group = dist.new_group(backend="gloo") if distributed else None

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def agreed(self) -> bool:
        """True on every process once any process has received a stop signal (call it on all processes)."""
        if self._group is None:
            return self.signal_name is not None
        vote = torch.tensor([self.signal_name is not None], dtype=torch.int32)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self._group)
        return bool(vote.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

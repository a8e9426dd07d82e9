"""Seconds of training, for time to quality: wall time of the training loop, evaluations excluded, carried
across resumes (start-up is never counted)."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class TrainingClock:
    def __init__(self, device: torch.device):
        self.device = device
        self.before = 0.0      # seconds of earlier attempts of this run (a resumed checkpoint's)
        self.started = None    # perf_counter() when this process's loop began
        self.excluded = 0.0    # seconds spent in evaluations since then

    def start(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        if self.started is None:
            return self.before
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # queued GPU work is training time not yet done
        return self.before + time.perf_counter() - self.started - self.excluded

    @contextmanager
    def paused(self):
        """Time inside this block is not training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start

    def state_dict(self) -> float:
        return self.seconds()

    def load_state_dict(self, seconds: float) -> None:
        self.before = seconds

"""One trial of a search: train_ddp.py in the trial's run dir as a child process, watched through the run's
epochs.jsonl. Each evaluation is reported to the Optuna trial; a trial the pruner stops, whose loss is no longer a
number, or whose health verdict flags a collapse COLLAPSE_EPOCHS epochs in a row, gets SIGTERM (the trainer writes a checkpoint and exits) and ends pruned with its reason. The
worker's own heartbeat goes to the study while the trial runs, so another worker can tell a dead one's trial.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .sweep import REPO

TRAIN = REPO / "train_ddp.py"
HEARTBEAT = "heartbeat"   # trial attribute: the time its worker last said it is alive
POLL_SECONDS = 0.5
# A collapse flagged this many epochs in a row ends the trial; early epochs of small models flag one and recover.
COLLAPSE_EPOCHS = 3


@dataclass
class Outcome:
    state: str           # complete | pruned | failed | interrupted
    value: float | None  # the objective at the trial's last evaluation
    reason: str = ""     # why it was pruned or failed, for the report
    train_seconds: float | None = None


class TrialRun:
    """Runs one trial to its end. `stop()` (a signal to the worker) stops the child with SIGTERM: its checkpoint is
    written and the outcome is 'interrupted', so the trial can be re-queued and resumed."""

    def __init__(self, trial, run_dir: Path, overrides: list[str], metric: str, heartbeat_seconds: float):
        self.trial, self.run_dir, self.overrides = trial, run_dir, overrides
        self.metric, self.heartbeat_seconds = metric, heartbeat_seconds
        self.process: subprocess.Popen | None = None
        self.lines_read = 0
        self.collapsed = 0             # epochs in a row the health verdict flagged a collapse
        self.last_value: float | None = None
        self.train_seconds: float | None = None
        self.prune_reason = ""
        self.interrupted = False

    def command(self) -> list[str]:
        gpus = _gpu_count()
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
                    if gpus > 1 else [sys.executable])
        return [*launcher, str(TRAIN), *self.overrides, f"train.run_dir={self.run_dir}", "train.resume=latest"]

    def run(self) -> Outcome:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "search-trial.log", "a") as output:
            self.process = subprocess.Popen(self.command(), cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
            beat = 0.0
            while self.process.poll() is None:
                if time.time() - beat >= self.heartbeat_seconds:
                    beat = time.time()
                    self.trial.set_user_attr(HEARTBEAT, beat)
                self.read_epochs()
                time.sleep(POLL_SECONDS)
        self.read_epochs()
        return self.outcome(self.process.returncode)

    def stop(self) -> None:
        self.interrupted = True
        self._terminate()

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def read_epochs(self) -> None:
        """Report the evaluations the run wrote since the last look; decide whether to prune it."""
        path = self.run_dir / "epochs.jsonl"
        if not path.is_file() or self.prune_reason:
            return
        lines = path.read_text().splitlines()
        complete = lines if path.read_text().endswith("\n") else lines[:-1]  # a line being written: next time
        for line in complete[self.lines_read:]:
            self.lines_read += 1
            record = json.loads(line)
            self.train_seconds = record["train_seconds"]
            trouble = record.get("diverged", "")
            self.collapsed = self.collapsed + 1 if trouble else 0
            if trouble.startswith("diverged"):
                self.prune(f"epoch {record['epoch']}: {trouble}")
                return
            if self.collapsed >= COLLAPSE_EPOCHS:
                self.prune(f"epoch {record['epoch']}: {trouble} ({self.collapsed} epochs in a row)")
                return
            value = (record.get("eval") or {}).get(self.metric)
            if value is None:
                continue
            if not math.isfinite(value):
                self.prune(f"epoch {record['epoch']}: {self.metric} is {value}")
                return
            self.last_value = value
            self.trial.report(value, record["epoch"])
            if self.trial.should_prune():
                self.prune(f"pruned at epoch {record['epoch']}: {self.metric} {value:.4g}, behind the other trials "
                           f"at that epoch")
                return

    def prune(self, reason: str) -> None:
        self.prune_reason = reason
        self._terminate()

    def outcome(self, returncode: int) -> Outcome:
        if self.prune_reason:
            return Outcome("pruned", self.last_value, self.prune_reason, self.train_seconds)
        if self.interrupted:
            return Outcome("interrupted", None, "its worker was stopped (a signal): re-queued to resume from its "
                                                "checkpoint", self.train_seconds)
        if returncode != 0 or not (self.run_dir / "generator.pt").is_file():
            return Outcome("failed", None, f"train_ddp.py exited with {returncode}: {self.last_words()}",
                           self.train_seconds)
        if self.last_value is None:
            return Outcome("failed", None, f"the run ended without an evaluation of {self.metric}", self.train_seconds)
        return Outcome("complete", self.last_value, "", self.train_seconds)

    def last_words(self) -> str:
        """The last line the run printed that says something (its error), for the trial's reason."""
        log = self.run_dir / "search-trial.log"
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] \
            if log.is_file() else []
        return lines[-1][:300] if lines else "no output"


def _gpu_count() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return 0
    import torch
    return torch.cuda.device_count()

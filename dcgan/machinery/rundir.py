"""Where a run writes: auto-numbered run directories, and which checkpoint `resume` means."""
from __future__ import annotations

import fcntl
import os
import re
import socket
from pathlib import Path

from dcgan.machinery.checkpoint import (CHECKPOINT_DIR, CheckpointError, UnreadableCheckpoint, list_checkpoints,
                                       load_for_resume)

_RUN = re.compile(r"^(\d{3,})-")


def new_run_dir(out_dir: Path, name: str) -> Path:
    """out_dir/000-name, out_dir/001-name, ...: the next free number."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in out_dir.iterdir() if (m := _RUN.match(p.name))]
    number = max(numbers, default=-1) + 1
    while True:  # another run starting at the same moment may take a number first: take the next
        run_dir = out_dir / f"{number:03d}-{name}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            number += 1


def latest_run_with_checkpoint(out_dir: Path, name: str) -> Path | None:
    """The newest out_dir/NNN-<name> holding a checkpoint: runs of other configs there are not this run's."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    runs = sorted((int(m.group(1)), p) for p in out_dir.iterdir()
                  if (m := _RUN.match(p.name)) and p.name[m.end():] == name and list_checkpoints(p))
    return runs[-1][1] if runs else None


def resolve(out_dir: str, run_dir: str, name: str, resume: str) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from or None). Creates the run directory if needed.

    resume=''       -> a new numbered run dir (or exactly train.run_dir)
    resume=latest   -> newest checkpoint of train.run_dir, else of the newest run of this config (NNN-<name>) in
                       out_dir; none yet is a fresh start, so a requeued job that never reached its first
                       checkpoint simply starts
    resume=<file>   -> that checkpoint, continuing in its own run dir
    """
    if resume and resume != "latest":
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise CheckpointError(f"train.resume={resume}: no such file (use 'latest' or a path to a ckpt-*.pt)")
        if run_dir:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            return Path(run_dir), ckpt
        home = ckpt.parent.parent if ckpt.parent.name == CHECKPOINT_DIR else None
        return (home or new_run_dir(Path(out_dir), name)), ckpt
    if run_dir:
        target = Path(run_dir)
        target.mkdir(parents=True, exist_ok=True)
    elif resume == "latest":
        target = latest_run_with_checkpoint(Path(out_dir), name) or new_run_dir(Path(out_dir), name)
    else:
        target = new_run_dir(Path(out_dir), name)
    checkpoints = list_checkpoints(target) if resume == "latest" else []
    return target, (checkpoints[-1] if checkpoints else None)


class RunDirBusy(CheckpointError):
    """Another training run holds this run dir."""


class RunDirLock:
    """One training run per run dir: an exclusive lock on <run_dir>/.lock, held by the main process until the run
    ends. The operating system releases it when that process ends in any way (a kill, a preemption), so a
    requeued job or a resume takes it again; two runs started on one run dir at once cannot both write there."""

    def __init__(self, run_dir: Path):
        self.file = open(Path(run_dir) / ".lock", "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            owner = self.file.read().strip() or "another process"
            self.file.close()
            raise RunDirBusy(f"run dir {run_dir} is in use by another training run ({owner}): wait for it to end, "
                             f"or give this run another train.run_dir / train.out_dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def newest_readable(checkpoints: list[Path], config_flat: dict) -> tuple[Path | None, dict | None, list[str]]:
    """(checkpoint, its state, notes) for resume=latest: the newest checkpoint this config can continue. An
    unreadable newer one (a kill or a disk fault while it was written) is passed over with a note, not fatal."""
    notes = []
    for path in reversed(checkpoints):
        try:
            return path, load_for_resume(path, config_flat), notes
        except UnreadableCheckpoint:
            notes.append(f"checkpoint {path} is unreadable or truncated: resuming from the newest readable one")
    if notes:
        raise CheckpointError(f"no readable checkpoint in {checkpoints[0].parent} ({len(notes)} unreadable): "
                              f"start afresh without train.resume=latest, or restore a checkpoint file")
    return None, None, notes

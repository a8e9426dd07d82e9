"""Where a run writes: auto-numbered run directories, and which checkpoint `resume` means."""
from __future__ import annotations

import re
from pathlib import Path

from .checkpoint import CHECKPOINT_DIR, CheckpointError, list_checkpoints

_RUN = re.compile(r"^(\d{3,})-")


def new_run_dir(out_dir: Path, name: str) -> Path:
    """out_dir/000-name, out_dir/001-name, ...: the next free number."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in out_dir.iterdir() if (m := _RUN.match(p.name))]
    run_dir = out_dir / f"{max(numbers, default=-1) + 1:03d}-{name}"
    run_dir.mkdir()
    return run_dir


def latest_run_with_checkpoint(out_dir: Path) -> Path | None:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    runs = sorted((int(m.group(1)), p) for p in out_dir.iterdir() if (m := _RUN.match(p.name)) and list_checkpoints(p))
    return runs[-1][1] if runs else None


def resolve(out_dir: str, run_dir: str, name: str, resume: str) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from or None). Creates the run directory if needed.

    resume=''       -> a new numbered run dir (or exactly train.run_dir)
    resume=latest   -> newest checkpoint of train.run_dir, else of the newest run in out_dir; none yet is a
                       fresh start, so a requeued job that never reached its first checkpoint simply starts
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
        target = latest_run_with_checkpoint(Path(out_dir)) or new_run_dir(Path(out_dir), name)
    else:
        target = new_run_dir(Path(out_dir), name)
    checkpoints = list_checkpoints(target) if resume == "latest" else []
    return target, (checkpoints[-1] if checkpoints else None)

"""Checkpoints: written atomically (temp file + rename), the last K kept, found again for `resume=latest`.

A checkpoint holds everything needed to continue exactly: G, D, the EMA generator, both optimizers, the
fp16 loss scaler, the step, every RNG state and the config. At the end of a run the generator (EMA) and
discriminator are also exported as plain state_dicts that load into dcgan.models.Generator/Discriminator.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint; the message is one line saying what to do."""


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def save_checkpoint(state: dict, run_dir: Path, step: int, keep_last: int) -> Path:
    path = checkpoint_path(run_dir, step)
    atomic_save(state, path)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train.resume takes 'latest' or a ckpt-*.pt file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({type(exc).__name__}); "
                              f"use an earlier checkpoint from {path.parent}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a training checkpoint of this project (it holds a {type(state).__name__})")
    missing = {"generator", "discriminator", "ema", "opt_g", "opt_d", "step", "config"} - set(state)
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of this project (missing {', '.join(sorted(missing))})")
    return state


def load_for_resume(path: Path, config_flat: dict) -> dict:
    """A checkpoint that this config can continue: readable, complete, and trained with the same shapes."""
    state = load_checkpoint(path)
    check_compatible(state["config"], config_flat, path)
    return state


# Keys that must agree between a checkpoint and the config resuming it: they fix tensor shapes or the
# order in which images are seen, so changing them would not be a continuation.
MUST_MATCH = ("data.image_size", "model.nz", "model.ngf", "model.ndf", "train.batch_size", "train.seed")


def check_compatible(saved_config: dict, config_flat: dict, path: Path) -> None:
    for key in MUST_MATCH:
        section, name = key.split(".")
        saved = saved_config.get(section, {}).get(name)
        if saved is not None and saved != config_flat[key]:
            raise CheckpointError(f"checkpoint {path} was trained with {key}={saved} but the config says "
                                  f"{config_flat[key]}: set {key}={saved} to resume it")


def load_state(module: torch.nn.Module, state_dict: dict, what: str, path: Path) -> None:
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{what} in {path} does not fit this model ({detail[:160]})") from None


# How an optimizer computes, not what it has learned: a resumed run keeps its own choice.
OPTIMIZER_IMPLEMENTATION = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Restore optimizer state but keep this run's implementation flags. load_state_dict would adopt the saved
    run's (an eager run's non-capturable Adam cannot be captured in a CUDA graph), and it places Adam's step
    counters by the saved flags, so they are replaced before loading, not after."""
    groups = [{**saved_group, **{k: group[k] for k in OPTIMIZER_IMPLEMENTATION if k in group}}
              for saved_group, group in zip(saved["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({**saved, "param_groups": groups})

"""Checkpoints: written atomically (temp file + rename), the last K kept, found again for `resume=latest`.

A checkpoint holds everything needed to continue exactly: G, D, the EMA generator, both optimizers, the
fp16 loss scaler, the step, every RNG state and the config. At the end of a run the generator (EMA) and
discriminator are also exported as plain state_dicts that load into dcgan.models.Generator/Discriminator, as
`.pt` and as `.safetensors` (the format model weights are shared in: tensors only, by construction).

Every file is read as data: tensors and plain values (`torch.load(weights_only=True)`, safetensors). A file that
would need more is refused with one line; nothing in it runs.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as save_safetensors

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
TRAINING_KEYS = {"generator", "discriminator", "ema", "opt_g", "opt_d", "step", "config"}


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint; the message is one line saying what to do."""


class UnreadableCheckpoint(CheckpointError):
    """The file is truncated or corrupt (a run killed while writing it, a disk fault): an older one may do."""


def atomic_write(path: Path, data: bytes) -> None:
    """`data` into a temp file in the same folder, fsync, then rename: a crash or a kill never leaves a half-written
    file under the real name, and a failed write (a full disk) leaves no temp file behind and raises an OSError
    that names `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def atomic_save(obj, path: Path) -> None:
    """torch.save, atomically. Serialized in memory first: the file is then written by plain file operations,
    whose failures are OSErrors with an errno (torch's own file writer reports a full disk as a RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer())


def export_weights(state_dict: dict, path: Path) -> None:
    """A model's state_dict as `path` (.pt) and beside it as .safetensors, both loadable into the package's classes."""
    atomic_save(state_dict, path)
    export_safetensors(state_dict, Path(path).with_suffix(".safetensors"))


def export_safetensors(state_dict: dict, path: Path) -> None:
    atomic_write(path, save_safetensors({name: tensor.contiguous() for name, tensor in state_dict.items()}))


def remove_stale_temp_files(folder: Path) -> None:
    """Temp files of writes that a kill interrupted (their process is gone; this run holds the run dir's lock)."""
    for stale in Path(folder).glob(".*.tmp*"):
        stale.unlink(missing_ok=True)


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
    for old in list_checkpoints(run_dir)[:-keep_last]:  # only once the new one is safely on disk
        old.unlink(missing_ok=True)
    remove_stale_temp_files(path.parent)
    return path


def read_weights(path: Path):
    """The data in a .pt or .safetensors file, read without running anything it may carry."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train.resume takes 'latest' or a ckpt-*.pt file)")
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(str(path))
        # weights_only: tensors and plain values only. A file that needs more (a pickled object, which could run
        # code when loaded) is refused, never executed: people evaluate and resume checkpoints they were sent.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only names what it refused: a GLOBAL is a callable or class the file would import and run
        if "GLOBAL" in str(exc):
            raise CheckpointError(f"{path} holds more than tensors and plain values; refused, since loading it "
                                  f"could run code (checkpoints of this project hold data only)") from None
        raise UnreadableCheckpoint(f"checkpoint {path} is unreadable or truncated (UnpicklingError); "
                                   f"use an earlier checkpoint from {path.parent}") from None
    except Exception as exc:
        raise UnreadableCheckpoint(f"checkpoint {path} is unreadable or truncated ({type(exc).__name__}); "
                                   f"use an earlier checkpoint from {path.parent}") from None


def is_training_checkpoint(state) -> bool:
    return isinstance(state, dict) and TRAINING_KEYS <= set(state)


def is_exported_model(state) -> bool:
    """A plain state_dict, as a run exports generator.pt / discriminator.pt (.safetensors)."""
    return isinstance(state, dict) and bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def check_training_checkpoint(state, path: Path) -> dict:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a training checkpoint of this project "
                              f"(it holds a {type(state).__name__})")
    if is_exported_model(state):
        raise CheckpointError(f"{path} is an exported model (a state_dict), not a training checkpoint: "
                              f"resume from a checkpoints/ckpt-*.pt of its run")
    missing = TRAINING_KEYS - set(state)
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of this project "
                              f"(missing {', '.join(sorted(missing))})")
    return state


def load_checkpoint(path: Path) -> dict:
    return check_training_checkpoint(read_weights(path), path)


def exported_config(path: Path) -> dict:
    """The config of the run an exported model (generator.pt / .safetensors) came from: its config.yaml beside it."""
    config_path = Path(path).parent / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{path} is an exported model without its run's config.yaml beside it (which gives "
                              f"its architecture): copy the run's config.yaml next to it")
    try:
        return yaml.safe_load(config_path.read_text())
    except yaml.YAMLError:
        raise CheckpointError(f"{config_path} is not valid YAML: copy the run's config.yaml next to {path}") from None


def load_for_resume(path: Path, config_flat: dict) -> dict:
    """A checkpoint that this config can continue: readable, complete, and trained with the same shapes."""
    state = load_checkpoint(path)
    check_compatible(state["config"], config_flat, path)
    return state


# Keys that must agree between a checkpoint and the config resuming it: they fix tensor shapes or the
# order in which images are seen, so changing them would not be a continuation.
MUST_MATCH = ("data.image_size", "model.nz", "model.ngf", "model.ndf", "model.g_extra_layers", "model.d_extra_layers",
              "model.conditional", "model.d_conditioning", "model.d_norm", "model.spectral_norm",
              "optim.name", "train.batch_size", "train.seed")


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

"""A trained generator from whatever a run left behind: its run dir (the latest checkpoint), a training
checkpoint, or an exported generator.pt / generator.safetensors (with the run's config.yaml beside it).
Everything is read as data (dcgan/machinery/checkpoint.py)."""
from __future__ import annotations

from pathlib import Path

import torch

from dcgan.machinery.checkpoint import (CheckpointError, check_training_checkpoint, exported_config, is_exported_model,
                         list_checkpoints, load_state, read_weights)
from dcgan.config import ConfigError, config_from_dict
from dcgan.models import Discriminator, Generator, models_for


def models_of(config: dict, path: Path) -> tuple[Generator, Discriminator]:
    """G and D of the architecture a run's `config` (as a dict) describes, as dcgan.models.models_for builds them."""
    try:
        return models_for(config_from_dict(config))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its run's config does not fit this version of the code ({exc})") from None


def build_generator(config: dict, weights: dict, what: str, path: Path) -> Generator:
    """The generator a run's `config` describes, holding `weights`, in eval mode on the CPU; weights that do not
    fit are a one-line CheckpointError."""
    G, _ = models_of(config, path)
    load_state(G, weights, what, path)
    return G.eval()


def build_discriminator(config: dict, weights: dict, path: Path) -> Discriminator:
    """The discriminator a run's `config` describes (its normalization and spectral norm included), holding
    `weights`, on the CPU in training mode (BatchNorm as a training step uses it)."""
    _, D = models_of(config, path)
    load_state(D, weights, "discriminator", path)
    return D


def generator_from(state: dict, use_ema: bool, path: Path) -> Generator:
    """The EMA (or raw) generator of a loaded training checkpoint."""
    return build_generator(state["config"], state["ema"] if use_ema else state["generator"],
                           "EMA generator" if use_ema else "generator", path)


def load_generator(path: Path, use_ema: bool, device: torch.device) -> tuple[Generator, dict, int | None]:
    """(generator, its run's config, its step) from a training checkpoint, or from an exported generator
    (generator.pt / generator.safetensors: the EMA, whose architecture is in the run's config.yaml beside it;
    its step is not recorded: None)."""
    state = read_weights(path)
    if not is_exported_model(state):
        state = check_training_checkpoint(state, path)
        return generator_from(state, use_ema, path).to(device), state["config"], state["step"]
    if not use_ema:
        raise CheckpointError(f"{path} is the exported EMA generator: the raw G (--no-ema) is in the run's checkpoints")
    config = exported_config(path)
    return build_generator(config, state, "exported generator", path).to(device), config, None


def resolve_generator_path(target: str | Path) -> Path:
    """A run dir means its latest checkpoint; a folder without checkpoints (pretrained/mnist32_cond, an export)
    its generator.safetensors; a file is itself."""
    path = Path(target)
    if path.is_dir():
        found = list_checkpoints(path)
        if found:
            return found[-1]
        if (path / "generator.safetensors").is_file():
            return path / "generator.safetensors"
        raise CheckpointError(f"{path} has no checkpoints/ckpt-*.pt nor generator.safetensors (is it a run "
                              f"directory?)")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (give a run directory, a ckpt-*.pt, or an exported "
                              f"generator.pt / generator.safetensors)")
    return path

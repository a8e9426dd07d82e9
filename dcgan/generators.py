"""A trained generator as a function from noise (and digits) to images, numpy in and numpy out, whatever file holds
it: a `generator.onnx` (python -m dcgan.export) runs on ONNX Runtime and never imports torch; anything else (a run
dir, a ckpt-*.pt, an exported generator.pt / generator.safetensors) loads through dcgan/loading.py on PyTorch.
dcgan.generate and dcgan.serve draw through this, so they run torch-free on an ONNX file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

DIGITS = 10  # MNIST's classes: dcgan.models.NUM_CLASSES, which this module cannot import (it needs torch)


class ModelFileError(ValueError):
    """A generator file that cannot be read or used as asked; the message is one line."""


class OnnxGenerator:
    """generator.onnx on ONNX Runtime's CPU provider. Its inputs say what it is: `z` (batch, nz) and, for a
    conditional generator, `digit` (batch,); its output `images` (batch, 1, size, size) in [-1, 1]."""

    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError:
            raise ModelFileError(f"{path}: an ONNX generator needs ONNX Runtime: pip install -r "
                                 f"requirements-onnx.txt") from None
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable models
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{path} is not a readable ONNX model ({reason})") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = self.session.get_outputs()
        if "z" not in inputs or len(outputs) != 1 or len(outputs[0].shape) != 4:
            raise ModelFileError(f"{path} is not a generator written by python -m dcgan.export (inputs "
                                 f"{sorted(inputs)}; it needs z, and digit for a conditional one)")
        self.nz, self.conditional = int(inputs["z"].shape[1]), "digit" in inputs
        self.image_size = int(outputs[0].shape[-1])
        self.source = path

    def __call__(self, z: np.ndarray, digits: np.ndarray) -> np.ndarray:
        feed = {"z": z.astype(np.float32)}
        if self.conditional:
            feed["digit"] = digits.astype(np.int64)
        return self.session.run(None, feed)[0]


class TorchGenerator:
    """A generator loaded by dcgan/loading.py, on `device` ("auto": the GPU when there is one)."""

    def __init__(self, target: Path, use_ema: bool, device: str):
        import torch

        from dcgan.loading import load_generator, resolve_generator_path
        from dcgan.machinery.checkpoint import CheckpointError
        self.torch = torch
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        try:
            self.G, config, _ = load_generator(resolve_generator_path(target), use_ema, self.device)
        except CheckpointError as exc:
            raise ModelFileError(str(exc)) from None
        self.nz, self.conditional = config["model"]["nz"], bool(self.G.conditional)
        self.image_size = config["data"]["image_size"]
        self.source = target

    def __call__(self, z: np.ndarray, digits: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            images = self.G(torch.from_numpy(z).to(self.device), torch.from_numpy(digits).to(self.device))
        return images.float().cpu().numpy()


def open_generator(target: str | Path, use_ema: bool = True, device: str = "auto") -> OnnxGenerator | TorchGenerator:
    """The generator `target` holds: a .onnx file on ONNX Runtime, anything else on PyTorch."""
    path = Path(target)
    if path.suffix.lower() != ".onnx":
        return TorchGenerator(path, use_ema, device)
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist")
    if not use_ema:
        raise ModelFileError(f"{path} holds the EMA generator: the raw G (--no-ema) is in the run's checkpoints")
    return OnnxGenerator(path)

"""A trained generator as ONNX, checked against ONNX Runtime, with a model card.

    python -m dcgan.export --checkpoint runs/000-mnist32_cond            # generator.onnx, MODEL.md, samples.png there
    python -m dcgan.export --checkpoint runs/000-mnist32_cond/checkpoints/ckpt-00014055.pt --out exported/

Writes, beside the run's generator.safetensors (or into --out, with a copy of it and the run's config.yaml):
`generator.onnx`, the EMA generator in eval mode, fp32, with a dynamic batch axis: input `z` (batch, nz) float32
and, for a conditional model, `digit` (batch,) int64; output `images` (batch, 1, size, size) in [-1, 1]. It holds
the graph only: its weights are read from generator.safetensors beside it (ONNX external data pointing at the
tensors' bytes there), so one copy of the weights serves PyTorch and ONNX Runtime alike; keep the two together. The file is checked before it is kept: ONNX Runtime's output for
the same noise and digits must be within 1e-4 of PyTorch's. Then `samples.png`, drawn by the ONNX file on ONNX
Runtime, and `MODEL.md`, the model card: the run's config, training time and precision, its last in-training
evaluation, the grid. `python -m dcgan.generate` and `python -m dcgan.serve` take the .onnx and run without torch.

A command of its own rather than an --onnx flag on generate: exporting needs torch, onnx and onnxscript, while the
point of the file is that drawing from it needs neither (pip install -r requirements-onnx.txt).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import imageio.v3 as iio
import numpy as np
import torch
import yaml

from dcgan.config import config_from_dict
from dcgan.generate import digits_to_draw, sample_noise, to_grid
from dcgan.generators import ModelFileError, OnnxGenerator
from dcgan.loading import load_generator, resolve_generator_path
from dcgan.machinery.checkpoint import (CheckpointError, atomic_write, export_safetensors, is_exported_model,
                                       read_weights)
from dcgan.machinery.run_log import read_scalars

if TYPE_CHECKING:
    import onnx

OPSET = 18              # ONNX Runtime 1.16+ runs it; torch's exporter writes 18 natively
TOLERANCE = 1e-4        # largest |ONNX Runtime - PyTorch| accepted, fp32 on the CPU
CHECK_SAMPLES = 16
GRID_SAMPLES = 64


class ExportError(ValueError):
    """A user-facing mistake or a failed check; the message is one line."""


def run_dir_of(checkpoint: Path) -> Path:
    """The run dir a generator file belongs to: a checkpoint sits in <run>/checkpoints/, an export in <run>/."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def to_onnx(G: torch.nn.Module) -> onnx.ModelProto:
    """G (eval mode, CPU, fp32) as an ONNX model with a dynamic batch axis. Unoptimized: BatchNorm stays a node of
    its own rather than folded into the convolutions, so every weight is a tensor of G's state dict, as stored."""
    z = torch.zeros(2, G.nz)
    inputs, names = ((z, torch.zeros(2, dtype=torch.long)), ["z", "digit"]) if G.conditional else ((z,), ["z"])
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress and deprecation notes are not the user's
        program = torch.onnx.export(G, inputs, input_names=names, output_names=["images"], opset_version=OPSET,
                                    dynamic_shapes=tuple({0: batch} for _ in inputs), dynamo=True, verbose=False,
                                    optimize=False)
    return program.model_proto


def link_weights(model: onnx.ModelProto, weights_file: Path) -> int:
    """Point every initializer that generator.safetensors holds (same name, fp32, equal values) at its bytes
    there (ONNX external data: file, offset, length), so the weights are stored once for both runtimes. Returns
    how many were linked."""
    import onnx
    from onnx import numpy_helper
    data = weights_file.read_bytes()
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_size])
    linked = 0
    for tensor in model.graph.initializer:
        entry = header.get(tensor.name)
        if not entry or entry["dtype"] != "F32" or entry["shape"] != list(tensor.dims):
            continue
        begin, end = (8 + header_size + offset for offset in entry["data_offsets"])
        if data[begin:end] != numpy_helper.to_array(tensor).astype("<f4").tobytes():
            continue
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", weights_file.name), ("offset", str(begin)), ("length", str(end - begin))):
            tensor.external_data.add(key=key, value=value)
        linked += 1
    return linked


def largest_difference(G: torch.nn.Module, onnx_file: Path) -> float:
    """max |ONNX Runtime - PyTorch| over CHECK_SAMPLES samples of seeded noise (and every digit in turn)."""
    z = sample_noise(CHECK_SAMPLES, G.nz, seed=0)
    digits, _ = digits_to_draw(CHECK_SAMPLES, None, G.conditional)
    with torch.no_grad():
        expected = G(torch.from_numpy(z), torch.from_numpy(digits)).numpy()
    return float(np.abs(OnnxGenerator(onnx_file)(z, digits) - expected).max())


def last_evaluation(run_dir: Path) -> tuple[int, dict[str, float]] | None:
    """(step, {metric: value}) of the run's last in-training evaluation, from its TensorBoard scalars."""
    curves = {tag[len("eval/"):]: curve for tag, curve in read_scalars(run_dir / "tensorboard").items()
              if tag.startswith("eval/")}
    if not curves:
        return None
    step = max(steps[-1] for steps, _ in curves.values())
    return step, {name: values[-1] for name, (steps, values) in curves.items() if steps[-1] == step}


def logged_precision(run_dir: Path, config: dict) -> str:
    """The precision the run trained in, as its train.log's first line states it (else the config's setting)."""
    log = run_dir / "train.log"
    found = re.search(r"precision (\w+)", log.read_text(errors="replace")) if log.is_file() else None
    return found.group(1) if found else str(config["train"]["mixed_precision"])


def model_card(config: dict, training: dict, difference: float) -> str:
    """MODEL.md: what the file is, how it was trained, how good it measured, how to use it."""
    model, data, train, optim, loss = (config[k] for k in ("model", "data", "train", "optim", "loss"))
    size, conditional = data["image_size"], model["conditional"]
    inputs = f"`z` float32 (batch, {model['nz']}), N(0, 1) noise"
    if conditional:
        inputs += "; `digit` int64 (batch,), the digit 0-9 to draw"
    seconds = training.get("train_seconds")
    rows = [("image size", f"{size} px"), ("networks", f"nz {model['nz']}, ngf {model['ngf']}, ndf {model['ndf']}, "
             f"D normalization {model['d_norm']}" + (f", conditional ({model['d_conditioning']})" if conditional
                                                     else "")),
            ("objective", f"loss {loss['name']}, R1 gamma {loss['r1_gamma']} every {loss['r1_every']} steps"),
            ("optimizer", f"{optim['name']}, lr G {optim['lr_g']:g} / D {optim['lr_d']:g}, decay {optim['lr_decay']}"),
            ("batch, epochs", f"{train['batch_size']}, {train['epochs']}"),
            ("steps trained", str(training.get("step", "not recorded (an exported generator)"))),
            ("seconds of training", f"{seconds:.1f}" if seconds is not None else "not recorded"),
            ("precision", training["precision"]), ("seed", str(train["seed"]))]
    lines = [f"# DCGAN generator: {training['run']}", "",
             f"`generator.onnx`, exported by `python -m dcgan.export` from `{training['source']}`: the EMA generator "
             f"in eval "
             f"mode, fp32, ONNX opset {OPSET}; its weights are those of `generator.safetensors` beside it, which it "
             f"reads (ONNX external data): keep the two together. Inputs: {inputs}. Output: `images` float32 "
             f"(batch, 1, {size}, {size}) in [-1, 1], black at -1. Any batch size. Checked at export: ONNX Runtime's output is within "
             f"{difference:.1e} of PyTorch's for the same inputs ({CHECK_SAMPLES} samples; the bound is "
             f"{TOLERANCE:g}).", "", "## Training", "", "| | |", "|---|---|",
             *[f"| {what} | {value} |" for what, value in rows], "", "## Last evaluation", ""]
    evaluation = training.get("evaluation")
    if evaluation:
        step, values = evaluation
        count, reference = config["eval"]["num_samples"], config["eval"]["reference"]
        other = "train" if reference == "test" else "test"
        floor = training["floor"]
        measured = isinstance(floor, dict)
        lines += [f"The run's in-training evaluation at step {step}, {count} samples of the EMA generator against "
                  f"{count} MNIST {reference} digits, beside the real-vs-real floor: {count} real {other} digits "
                  f"measured the same way against the same {reference} digits, a perfect generator's score "
                  f"(none for the conditional metrics: real digits are not drawn for a requested class).", "",
                  "| metric | value | floor |", "|---|---|---|",
                  *[f"| {name} | {value:.4g} | {f'{floor[name]:.4g}' if measured and name in floor else '-'} |"
                    for name, value in sorted(values.items())]]
        if not measured:
            lines += ["", f"The floor was not measured at export ({floor}): `python -m evaluation.fid --checkpoint "
                          f"{training['folder']} --metrics {config['eval']['metrics']} --num-samples {count} "
                          f"--reference-floor` prints it."]
    else:
        lines += ["The run did not evaluate during training (`eval.every_epochs` 0): "
                  f"`python -m evaluation.fid --checkpoint {training['folder']} --reference-floor` measures it."]
    lines += ["", "## Samples", "", f"{GRID_SAMPLES} samples drawn by `generator.onnx` on ONNX Runtime, seed 0"
              + (", one column per digit" if conditional else "") + ":", "", "![samples](samples.png)", "",
              "## Use", "", "```bash",
              f"python -m dcgan.generate --checkpoint {training['folder']}/generator.onnx --num 64 --out grid.png",
              f"python -m dcgan.serve --checkpoint {training['folder']}/generator.onnx", "```", ""]
    return "\n".join(lines)


def evaluation_floor(config: dict, data_root: str | None) -> dict[str, float] | str:
    """The real-vs-real floor of the run's in-training evaluation (its metrics, count, reference and judge), or
    why it cannot be measured here (the data or the judge missing)."""
    from evaluation.common import EvaluationError
    from evaluation.during_training import PeriodicEvaluator
    from dcgan.train.data import DataError
    root = data_root or config["data"]["root"]
    try:
        evaluator = PeriodicEvaluator(config["eval"], root, config["data"]["image_size"], config["model"]["nz"])
        return evaluator.floor(torch.device("cpu"))
    except (EvaluationError, DataError) as exc:
        return str(exc).rstrip(".")


def export(target: str, out: str | None, floor_data: str | None = None, with_floor: bool = True) -> Path:
    """Write generator.onnx, samples.png and MODEL.md for the generator `target` names; returns the folder. The
    card's floor is measured on MNIST at `floor_data` (default: the run's data.root) unless `with_floor` is off."""
    path = resolve_generator_path(target)
    if path.suffix.lower() == ".onnx":
        raise ExportError(f"{path} is already ONNX: give the run dir, a checkpoint or generator.safetensors")
    G, recorded, step = load_generator(path, True, torch.device("cpu"))
    config = config_from_dict(recorded).to_dict()  # an older run's config, with today's defaults filled in
    run_dir = run_dir_of(path)
    folder = Path(out) if out else run_dir
    folder.mkdir(parents=True, exist_ok=True)
    weights_file = place_weights(G, recorded, folder)
    model = to_onnx(G.float())
    if link_weights(model, weights_file) != len(G.state_dict()) - count_integer_buffers(G):
        raise ExportError("the ONNX graph's weights are not generator.safetensors' tensors (an exporter change?): "
                          "generator.onnx not written")
    onnx_file, candidate = folder / "generator.onnx", folder / "generator.onnx.checking"
    atomic_write(candidate, model.SerializeToString())
    try:
        difference = largest_difference(G, candidate)
        if not difference <= TOLERANCE:
            raise ExportError(f"ONNX Runtime's output differs from PyTorch's by {difference:.2e} (more than "
                              f"{TOLERANCE:g}): generator.onnx not written")
        candidate.replace(onnx_file)
    finally:
        candidate.unlink(missing_ok=True)
    drawn = OnnxGenerator(onnx_file)
    digits, nrow = digits_to_draw(GRID_SAMPLES, None, drawn.conditional)
    grid = to_grid(drawn(sample_noise(GRID_SAMPLES, drawn.nz, 0), digits), nrow)
    atomic_write(folder / "samples.png", iio.imwrite("<bytes>", grid, extension=".png"))
    state = read_weights(path)
    source = path.relative_to(run_dir.parent) if path.is_relative_to(run_dir.parent) else path
    training = {"run": run_dir.name, "source": source, "folder": folder, "step": step,
                "precision": logged_precision(run_dir, config),
                "train_seconds": None if is_exported_model(state) else state.get("train_seconds"),
                "evaluation": last_evaluation(run_dir)}
    if training["evaluation"]:
        training["floor"] = evaluation_floor(config, floor_data) if with_floor else "--no-floor"
        if isinstance(training["floor"], str) and with_floor:
            print(f"note: the model card's floor was not measured ({training['floor']}): --data-root names the "
                  f"folder holding MNIST/raw/", file=sys.stderr)
    atomic_write(folder / "MODEL.md", model_card(config, training, difference).encode())
    return folder


def place_weights(G: torch.nn.Module, config: dict, folder: Path) -> Path:
    """generator.safetensors (and the run's config.yaml) of G in `folder`: kept where it is G already,
    written where there is none; another generator's there is a one-line error (the run dir's export is the last
    checkpoint's: an earlier checkpoint goes to a folder of its own)."""
    weights_file = folder / "generator.safetensors"
    if weights_file.is_file():
        saved = read_weights(weights_file)
        same = saved.keys() == G.state_dict().keys() and all(torch.equal(saved[k], v) for k, v in
                                                             G.state_dict().items())
        if not same:
            raise ExportError(f"{weights_file} holds another generator than the one exported: give --out DIR")
    else:
        export_safetensors(G.state_dict(), weights_file)
    if not (folder / "config.yaml").is_file():
        atomic_write(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
    return weights_file


def count_integer_buffers(G: torch.nn.Module) -> int:
    """State-dict entries that are no graph weight (BatchNorm's num_batches_tracked)."""
    return sum(not v.is_floating_point() for v in G.state_dict().values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run dir, ckpt-*.pt, or exported generator.safetensors/.pt")
    parser.add_argument("--out", help="folder to write into (default: the run dir)")
    parser.add_argument("--data-root", help="folder holding MNIST/raw/ for the card's real-vs-real floor "
                                            "(default: the run's data.root)")
    parser.add_argument("--no-floor", action="store_true", help="leave the floor out of the card (it costs one "
                                                                "evaluation of real digits)")
    args = parser.parse_intermixed_args(argv)
    try:  # the exporter's own dependencies, imported where used: here a clear line rather than an ImportError
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        print("error: exporting needs onnx and onnxscript: pip install -r requirements-onnx.txt", file=sys.stderr)
        return 2
    try:
        folder = export(args.checkpoint, args.out, args.data_root, not args.no_floor)
    except (ExportError, CheckpointError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{folder / 'generator.onnx'}: ONNX opset {OPSET}, checked against PyTorch; model card {folder / 'MODEL.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

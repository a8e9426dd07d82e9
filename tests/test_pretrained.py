"""pretrained/mnist32_cond: the shipped conditional generator (bash pretrained/remake.sh makes it). Its files load,
its PyTorch and ONNX forms agree, it fits in 2 MB, and it draws the digit it is asked for."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from support import ROOT, TINY, subprocess_env
from dcgan.generate import sample_noise, to_pixels
from dcgan.generators import OnnxGenerator, TorchGenerator

PRETRAINED = ROOT / "pretrained" / "mnist32_cond"
FILES = {"generator.safetensors", "generator.onnx", "config.yaml", "MODEL.md", "samples.png"}


def test_the_shipped_files_and_their_size():
    assert {p.name for p in PRETRAINED.iterdir()} == FILES
    assert sum(p.stat().st_size for p in PRETRAINED.iterdir()) < 2 * 1024 * 1024
    config = yaml.safe_load((PRETRAINED / "config.yaml").read_text())
    shipped = yaml.safe_load((ROOT / "configs" / "mnist32_cond.yaml").read_text())
    for section in ("model", "optim", "loss"):
        assert {k: config[section][k] for k in shipped[section]} == shipped[section], section
    card = (PRETRAINED / "MODEL.md").read_text()
    assert "| steps trained | 14055 |" in card and "| class_accuracy |" in card and "10000 samples" in card


def test_pytorch_and_onnx_draw_the_same_digits():
    pytest.importorskip("onnxruntime", reason="requirements-onnx.txt")
    torch_G, onnx_G = TorchGenerator(PRETRAINED / "generator.safetensors", True, "cpu"), OnnxGenerator(
        PRETRAINED / "generator.onnx")
    assert (onnx_G.nz, onnx_G.conditional, onnx_G.image_size) == (torch_G.nz, True, 32)
    z, digits = sample_noise(50, torch_G.nz, seed=11), np.arange(50) % 10
    assert np.abs(torch_G(z, digits) - onnx_G(z, digits)).max() <= 1e-4


def test_it_draws_the_digit_asked_for(real_classifier):
    from evaluation.metrics import classify
    G = TorchGenerator(PRETRAINED / "generator.safetensors", True, "cpu")
    digits = np.repeat(np.arange(10), 50)
    pixels = torch.from_numpy(to_pixels(G(sample_noise(500, G.nz, seed=0), digits))).permute(0, 3, 1, 2)
    read = classify(pixels.contiguous(), real_classifier, torch.device("cpu")).argmax(1).numpy()
    accuracy = (read == digits).mean()
    print(f"the classifier reads {accuracy:.3f} of 500 samples as the digit asked for")
    assert accuracy >= 0.95 and min((read[digits == d] == d).mean() for d in range(10)) >= 0.8


def test_the_remake_script_makes_such_a_folder(mnist_root, tiny_classifier, tmp_path):
    """pretrained/remake.sh as shipped, made small: one epoch of a tiny model on the small test digits, evaluated."""
    small = [a for a in TINY if not a.startswith("data.image_size")] + ["train.epochs=1", "eval.every_epochs=1",
                                                                        "eval.num_samples=100"]
    env = subprocess_env() | {"OUT": str(tmp_path / "out"), "TRAIN_ARGS": " ".join(small), "PYTHON": sys.executable,
                              "DCGAN_CACHE": str(tiny_classifier.parent)}
    result = subprocess.run(["bash", "pretrained/remake.sh", str(mnist_root)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert {p.name for p in (tmp_path / "out").iterdir()} == FILES
    card = (tmp_path / "out" / "MODEL.md").read_text()
    assert "| steps trained | 16 |" in card and "conditional (projection)" in card and "100 samples" in card
    # The card's floor is the one `python -m evaluation.fid --reference-floor` measures with the run's settings.
    rows = dict(line.strip("| ").split(" | ", 1) for line in card.splitlines() if line.startswith("| clf_fid"))
    command = [sys.executable, "-m", "evaluation.fid", "--checkpoint", str(tmp_path / "out"), "--data-root",
               str(mnist_root), "--metrics", "clf_fid,class", "--reference-floor", "--json", str(tmp_path / "fid.json")]
    measured = subprocess.run(command + ["--num-samples", "100"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
    assert measured.returncode == 0, measured.stderr
    results = {r["metric"]: r["value"] for r in json.loads((tmp_path / "fid.json").read_text())["results"]}
    assert rows["clf_fid"] == f"{results['clf_fid']:.4g} | {results['floor_clf_fid']:.4g}"
    assert rows["clf_fid_per_class"].endswith(" | -")       # no floor for a conditional metric
    # Too few of one digit for its per-digit FID (the first 64 test digits hold one 6): one line, not a traceback.
    few = subprocess.run(command + ["--num-samples", "64"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert few.returncode == 2 and few.stderr.count("\n") == 1 and "reference has 1: raise --num-samples" in few.stderr

"""python -m dcgan.export: the EMA generator as ONNX, equal to PyTorch's on ONNX Runtime at 28, 32 and 64 px,
conditional and not; and dcgan.generate / dcgan.serve drawing from generator.onnx without importing torch."""
import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from support import ROOT, fetch_when_up, free_port, subprocess_env
from dcgan.config import load_config
from dcgan.export import export
from dcgan.generators import OnnxGenerator
from dcgan.machinery.checkpoint import export_weights
from dcgan.models import models_for

pytest.importorskip("onnxruntime", reason="ONNX export needs requirements-onnx.txt")
pytest.importorskip("onnxscript", reason="ONNX export needs requirements-onnx.txt")

SHAPES = [(28, False), (28, True), (32, False), (32, True), (64, False), (64, True)]
# Importing torch fails in these processes: what they do, they do without it.
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def exported_generator(folder, image_size: int, conditional: bool) -> torch.nn.Module:
    """A run's exported generator (generator.safetensors and its config.yaml), its weights and BatchNorm statistics
    random so that every layer matters; returns the PyTorch module."""
    cfg = load_config(overrides=[f"data.image_size={image_size}", "model.nz=16", "model.ngf=8", "model.ndf=8",
                                 f"model.conditional={str(conditional).lower()}"])
    G, _ = models_for(cfg)
    rng = torch.Generator().manual_seed(image_size + conditional)
    for name, tensor in G.state_dict().items():
        if tensor.is_floating_point():
            fresh = torch.rand(tensor.shape, generator=rng) + 0.5 if "running_var" in name else \
                torch.randn(tensor.shape, generator=rng) * 0.2
            tensor.copy_(fresh)
    folder.mkdir(parents=True, exist_ok=True)
    export_weights(G.state_dict(), folder / "generator.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    return G.eval()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(size, conditional) -> (run folder with generator.onnx, the PyTorch generator)."""
    made = {}
    for size, conditional in SHAPES:
        folder = tmp_path_factory.mktemp(f"export{size}{'c' if conditional else ''}")
        G = exported_generator(folder, size, conditional)
        export(str(folder / "generator.safetensors"), None)
        made[size, conditional] = folder, G
    return made


@pytest.mark.parametrize("size, conditional", SHAPES)
def test_onnx_runtime_equals_pytorch(runs, size, conditional):
    folder, G = runs[size, conditional]
    onnx_G = OnnxGenerator(folder / "generator.onnx")
    assert (onnx_G.nz, onnx_G.conditional, onnx_G.image_size) == (16, conditional, size)
    for batch in (1, 33):  # the batch axis is free, whatever batch the export traced
        z = np.random.default_rng(batch).standard_normal((batch, 16), dtype=np.float32)
        digits = np.arange(batch) % 10
        with torch.no_grad():
            expected = G(torch.from_numpy(z), torch.from_numpy(digits)).numpy()
        got = onnx_G(z, digits)
        assert got.shape == (batch, 1, size, size) and np.abs(got - expected).max() <= 1e-4
    if conditional:  # the digit input is used: another digit, another image
        z = np.repeat(np.random.default_rng(0).standard_normal((1, 16), dtype=np.float32), 2, axis=0)
        assert np.abs(onnx_G(z, np.array([3, 7]))[0] - onnx_G(z, np.array([3, 7]))[1]).max() > 1e-3


def test_the_command_writes_the_onnx_its_card_and_grid(runs, tmp_path):
    folder, _ = runs[32, True]
    result = subprocess.run([sys.executable, "-m", "dcgan.export", "--checkpoint", str(folder / "generator.pt"),
                             "--out", str(tmp_path / "out")], cwd=ROOT, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'out' / 'generator.onnx'}: ONNX opset 18, checked")
    card = (tmp_path / "out" / "MODEL.md").read_text()
    for part in ("## Training", "## Last evaluation", "## Samples", "`digit` int64", "(batch, 1, 32, 32)",
                 "![samples](samples.png)", f"python -m dcgan.serve --checkpoint {tmp_path / 'out'}/generator.onnx"):
        assert part in card, part
    with Image.open(tmp_path / "out" / "samples.png") as grid:      # 64 samples, one column per digit
        assert grid.size == (10 * 34 + 2, 7 * 34 + 2)
    mistake = subprocess.run([sys.executable, "-m", "dcgan.export", "--checkpoint", str(tmp_path / "nowhere")],
                             cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert mistake.returncode == 2 and mistake.stderr.count("\n") == 1 and "does not exist" in mistake.stderr


def test_export_without_onnx_installed_is_one_line(runs):
    folder, _ = runs[28, False]
    script = ("import sys; sys.modules['onnx'] = None\nfrom dcgan.export import main\n"
              f"sys.exit(main(['--checkpoint', {str(folder)!r}]))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and result.stderr == ("error: exporting needs onnx and onnxscript: pip install -r "
                                                        "requirements-onnx.txt\n")


def test_generate_draws_from_onnx_without_torch(runs, tmp_path):
    folder, _ = runs[28, True]
    script = NO_TORCH + ("from dcgan.generate import main\n"
                         f"assert main(['--checkpoint', {str(folder / 'generator.onnx')!r}, '--num', '20', '--seed', "
                         f"'5', '--out', {str(tmp_path / 'onnx.png')!r}]) == 0\n"
                         f"assert main(['--checkpoint', {str(folder / 'generator.onnx')!r}, '--digit', '4', "
                         f"'--num', '4', '--interpolate', '3', '--out', {str(tmp_path / 'walk.gif')!r}]) == 0")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # the same seed through PyTorch draws the same digits (noise is numpy's in both; pixels may round apart by 1)
    from dcgan.generate import main
    assert main(["--checkpoint", str(folder / "generator.safetensors"), "--num", "20", "--seed", "5",
                 "--out", str(tmp_path / "torch.png")]) == 0
    onnx_pixels, torch_pixels = (np.asarray(Image.open(tmp_path / name), dtype=int) for name in ("onnx.png", "torch.png"))
    assert onnx_pixels.shape == torch_pixels.shape == (2 * 30 + 2, 10 * 30 + 2, 3)
    assert np.abs(onnx_pixels - torch_pixels).max() <= 1 and onnx_pixels.std() > 10
    with Image.open(tmp_path / "walk.gif") as walk:
        assert walk.n_frames == 4 * 3


def test_a_file_that_is_not_a_generator_is_one_line(runs, tmp_path, capsys):
    from dcgan.generate import main
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main(["--checkpoint", str(tmp_path / "junk.onnx"), "--out", str(tmp_path / "g.png")]) == 2
    assert main(["--checkpoint", str(runs[28, False][0] / "generator.onnx"), "--no-ema",
                 "--out", str(tmp_path / "g.png")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "is not a readable ONNX model" in lines[0] and "holds the EMA generator" in lines[1]


def test_serve_runs_on_onnx_without_torch(runs):
    pytest.importorskip("uvicorn", reason="the page needs requirements-serve.txt")
    folder, _ = runs[28, True]
    port = free_port()
    script = NO_TORCH + ("import sys\nfrom dcgan.serve import main\n"
                         f"sys.exit(main(['--checkpoint', {str(folder / 'generator.onnx')!r}, '--port', '{port}']))")
    server = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def check_alive():
            assert server.poll() is None, server.stderr.read()
        info = fetch_when_up(f"{base}/info", check_alive)
        assert json.loads(info) | {"checkpoint": None} == {"checkpoint": None, "conditional": True, "image_size": 28,
                                                           "max_count": 64}
        png = urllib.request.urlopen(f"{base}/grid.png?digit=3&seed=1&count=9", timeout=30).read()
        assert png[:4] == b"\x89PNG"
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(f"{base}/grid.png?seed={'9' * 23}", timeout=30)
        assert bad.value.code == 400 and bad.value.read().decode().startswith("seed must be 0 to")
        assert urllib.request.urlopen(f"{base}/walk.gif?count=4", timeout=30).read()[:4] == b"GIF8"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_floor_that_cannot_be_measured_is_said_so_on_the_card(tmp_path):
    from dcgan.export import evaluation_floor, model_card
    config = load_config(overrides=["model.conditional=true", "eval.metrics=clf_fid,class"]).to_dict()
    reason = evaluation_floor(config, str(tmp_path / "no-mnist"))
    assert isinstance(reason, str) and "\n" not in reason and str(tmp_path / "no-mnist") in reason
    training = {"run": "000-mnist32", "source": "x", "folder": "runs/000-mnist32", "step": 10, "precision": "no",
                "train_seconds": 1.0, "evaluation": (10, {"clf_fid": 7.5, "class_accuracy": 0.9}), "floor": reason}
    card = model_card(config, training, 1e-7)
    assert "| clf_fid | 7.5 | - |" in card and f"not measured at export ({reason})" in card
    assert "--metrics clf_fid,class --num-samples 2000 --reference-floor` prints it" in card

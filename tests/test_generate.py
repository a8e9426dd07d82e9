"""python -m dcgan.generate as a user types it: grids, single PNGs, latent walks and progress animations from a
run, a checkpoint or an exported generator; mistakes are one line."""
import contextlib
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from support import ROOT, TINY, only_run_dir, run_train, subprocess_env
from dcgan.generate import main, sample_noise, slerp, to_grid


@pytest.fixture(scope="module")
def run(mnist_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("generate_runs")
    run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={out}", "train.epochs=3"])
    return only_run_dir(out)


def generate(*args) -> subprocess.CompletedProcess:
    """The command as typed, in its own process."""
    return subprocess.run([sys.executable, "-m", "dcgan.generate", *map(str, args)], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def ok(*args) -> str:
    """The same command's main() in this process (a new process per call costs seconds of imports)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert code == 0, err.getvalue()
    return out.getvalue()


def test_the_command_writes_a_grid(run, tmp_path):
    result = generate("--checkpoint", run, "--num", 9, "--out", tmp_path / "grid.png")
    assert result.returncode == 0 and result.stdout.strip() == f"{tmp_path / 'grid.png'}: a grid of 9 samples"
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == (3 * 30 + 2, 3 * 30 + 2)
    mistake = generate("--checkpoint", run, "--digit", "12", "--out", tmp_path / "g.png")
    assert mistake.returncode == 2 and mistake.stderr == "error: --digit 12: digits are 0 to 9\n"


def test_grid_from_a_run_a_checkpoint_and_an_exported_generator(run, tmp_path):
    pixels = {}
    for name, source in (("run", run), ("ckpt", sorted((run / "checkpoints").glob("ckpt-*.pt"))[-1]),
                         ("pt", run / "generator.pt"), ("safetensors", run / "generator.safetensors")):
        ok("--checkpoint", source, "--num", 16, "--out", tmp_path / f"{name}.png", "--seed", 3)
        with Image.open(tmp_path / f"{name}.png") as image:
            assert image.size == (4 * 30 + 2, 4 * 30 + 2)          # 4 x 4 digits of 28 px, 2 px padding
            pixels[name] = image.tobytes()
    # the latest checkpoint's EMA is the exported generator: the same samples, however it is named
    assert pixels["run"] == pixels["ckpt"] == pixels["pt"] == pixels["safetensors"]
    ok("--checkpoint", run, "--num", 16, "--out", tmp_path / "other-seed.png", "--seed", 4)
    with Image.open(tmp_path / "other-seed.png") as image:
        assert image.tobytes() != pixels["run"]
    ok("--checkpoint", run, "--num", 16, "--out", tmp_path / "raw.png", "--seed", 3, "--no-ema")
    with Image.open(tmp_path / "raw.png") as image:
        assert image.tobytes() != pixels["run"]                        # the raw G, not its EMA


def test_one_png_per_sample(run, tmp_path):
    assert "5 PNGs" in ok("--checkpoint", run, "--num", 5, "--out-dir", tmp_path / "digits")
    files = sorted((tmp_path / "digits").glob("*.png"))
    assert [f.name for f in files] == [f"sample-{i:05d}.png" for i in range(5)]
    with Image.open(files[0]) as image:
        assert image.size == (28, 28)


def test_latent_walk_and_training_progress_are_gifs(run, tmp_path):
    ok("--checkpoint", run, "--num", 4, "--interpolate", 3, "--out", tmp_path / "walk.gif")
    with Image.open(tmp_path / "walk.gif") as gif:
        frames = [frame.copy() for frame in ImageSequence.Iterator(gif)]
    assert len(frames) == 4 * 3 and frames[0].size == (2 * 30 + 2, 2 * 30 + 2)
    ok("--progress", run, "--out", tmp_path / "progress.gif")
    with Image.open(tmp_path / "progress.gif") as gif:
        assert gif.n_frames == len(list((run / "samples").glob("samples_ema-*.png"))) == 3


def test_truncation_and_slerp():
    z = sample_noise(200, 16, seed=0, truncation=0.5)
    assert z.dtype == np.float32 and np.abs(z).max() <= 0.5 and z.std() > 0.2    # redrawn, not clipped
    assert np.array_equal(sample_noise(3, 4, seed=1), sample_noise(3, 4, seed=1))
    assert not np.array_equal(sample_noise(3, 4, seed=1), sample_noise(3, 4, seed=2))
    a, b = sample_noise(2, 64, 0), sample_noise(2, 64, 1)
    assert np.allclose(slerp(a, b, 0.0), a, atol=1e-5) and np.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    middle = np.linalg.norm(slerp(a, b, 0.5), axis=1)
    assert (middle > 0.9 * np.minimum(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))).all()  # typical norm


def test_the_torch_free_digit_count_is_the_models():
    """dcgan/generators.py cannot import dcgan.models (torch) for its class count: it keeps its own, equal."""
    from dcgan.generators import DIGITS
    from dcgan.models import NUM_CLASSES
    assert DIGITS == NUM_CLASSES


def test_grid_layout_is_torchvisions():
    """to_grid draws the run's own sample-grid layout (torchvision's make_grid: 2 px of white between and around,
    [-1, 1] to 0-255) without torch, so that an ONNX generator's grids look like a run's."""
    from torchvision.utils import make_grid
    images = np.random.default_rng(0).uniform(-1, 1, (7, 1, 5, 6)).astype(np.float32)
    expected = make_grid(torch.from_numpy(images), nrow=3, normalize=True, value_range=(-1, 1), pad_value=1.0)
    expected = (expected * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # as save_image
    assert np.array_equal(to_grid(images, 3), expected)


@pytest.mark.parametrize("args, says", [
    (["--checkpoint", "{tmp}/nowhere", "--out", "g.png"], "does not exist"),
    (["--checkpoint", "{run}", "--digit", "12", "--out", "g.png"], "--digit 12: digits are 0 to 9"),
    (["--checkpoint", "{run}", "--digit", "7", "--out", "{tmp}/g.png"], "this generator is unconditional"),
    (["--checkpoint", "{run}", "--num", "0", "--out", "g.png"], "--num 0: draw 1 to 4096"),
    (["--checkpoint", "{run}", "--num", "100000", "--out", "g.png"], "--num 100000"),
    (["--checkpoint", "{run}", "--out", "g.txt"], "a grid is written as .png"),
    (["--checkpoint", "{run}", "--interpolate", "4", "--out", "w.png"], "an animation is written as .gif or .mp4"),
    (["--checkpoint", "{run}"], "say where to write"),
    (["--checkpoint", "{run}", "--seed", "9" * 23, "--out", "{tmp}/g.png"], "seeds are 0 to"),
    (["--checkpoint", "{run}", "--seed", "-1", "--out", "{tmp}/g.png"], "seeds are 0 to"),
    (["--progress", "{tmp}", "--out", "{tmp}/p.gif"], "has no samples/samples_ema-*.png"),
])
def test_mistakes_are_one_line(run, tmp_path, args, says, capsys):
    assert main([a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path)) for a in args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines


def test_latent_walk_as_mp4(run, tmp_path):
    import imageio.v3 as iio
    assert "a latent walk of 8 frames" in ok("--checkpoint", run, "--num", 9, "--interpolate", 2, "--out", tmp_path / "walk.mp4")
    frames = iio.imread(tmp_path / "walk.mp4", plugin="FFMPEG")
    assert frames.shape[0] == 8 and frames.shape[1:3] == (3 * 30 + 2, 3 * 30 + 2)   # even sides already
    ok("--progress", run, "--out", tmp_path / "progress.mp4")
    assert iio.imread(tmp_path / "progress.mp4", plugin="FFMPEG").shape[0] == 3


def test_drawing_from_a_run_imports_no_training_code(run, tmp_path):
    """The tools that use a trained generator (dcgan.loading, dcgan.generate, dcgan.serve) stand apart from the
    training code in dcgan/train/: drawing from a run's training checkpoint loads none of it."""
    script = ("import sys\nfrom dcgan.generate import main\nimport dcgan.serve\n"
              f"assert main(['--checkpoint', {str(run)!r}, '--num', '4', '--out', {str(tmp_path / 'g.png')!r}]) == 0\n"
              "print('training modules:', *sorted(m for m in sys.modules if m.startswith('dcgan.train')))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "g.png").is_file()
    assert result.stdout.splitlines()[-1] == "training modules:"

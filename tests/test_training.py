"""End-to-end runs of train_ddp.py on a tiny model and a small IDX dataset, as a user runs it."""
import math
import re
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from conftest import ROOT, TINY, load_ckpt, only_run_dir, run_train, subprocess_env
from dcgan.models import Discriminator, Generator
from dcgan import reporting
from dcgan.reporting import Health


@pytest.fixture(scope="module")
def short_run(mnist_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    # 512 images / batch 32 = 16 steps per epoch; 2 epochs; checkpoints at 10, 16 (epoch), 20, 30, 32.
    result = run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={out}", "train.epochs=2",
                               "train.checkpoint_every=10", "train.keep_last=2"])
    return only_run_dir(out), result


def test_run_dir_layout(short_run):
    run_dir, result = short_run
    assert run_dir.name == "000-mnist64"                  # numbered, named after the config file
    assert (run_dir / "config.yaml").read_text().count("image_size: 28") == 1
    log = (run_dir / "train.log").read_text()
    assert "1 process(es)" in log and "epoch 2/2 step 32" in log and "done: 32 steps" in log
    assert "CUDA graphs False" in log                    # on by default, but they need a GPU
    # keep_last=2: only the two newest of the five checkpoints remain, and no temp files
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt-00000030.pt", "ckpt-00000032.pt"]


def test_checkpoint_contents(short_run):
    state = load_ckpt(short_run[0])
    assert state["step"] == 32 and state["epoch"] == 2
    assert {"generator", "discriminator", "ema", "opt_g", "opt_d", "scaler", "rng", "config"} <= set(state)
    assert state["config"]["model"]["ngf"] == 8
    assert state["opt_g"]["state"] and state["opt_d"]["state"]          # Adam moments saved
    # EMA is a real average, not a copy of G
    assert not torch.equal(state["ema"]["main.0.weight"], state["generator"]["main.0.weight"])


def test_exported_models_load_into_package_classes(short_run):
    run_dir = short_run[0]
    G, D = Generator(28, nz=16, ngf=8), Discriminator(28, ndf=8)
    G.load_state_dict(torch.load(run_dir / "generator.pt", weights_only=True))
    D.load_state_dict(torch.load(run_dir / "discriminator.pt", weights_only=True))
    G.eval()
    images = G(torch.randn(4, 16))
    assert images.shape == (4, 1, 28, 28) and torch.isfinite(D(images)).all()


def test_tensorboard_scalars_images_and_hparams(short_run):
    run_dir = short_run[0]
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("loss/D", "loss/G", "D(x)", "D(G(z))", "perf/img_per_s", "health/ok", "health/D_x"):
        assert tag in scalars, (tag, scalars)
    losses = [e.value for e in events.Scalars("loss/D")] + [e.value for e in events.Scalars("loss/G")]
    assert len(losses) == 2 * 8 and all(math.isfinite(v) and v > 0 for v in losses)  # logged every 4 of 32 steps
    assert [e.step for e in events.Scalars("health/ok")] == [16, 32]                     # once per epoch
    assert {"samples/generator", "samples/ema", "samples/real_vs_fake"} <= set(events.Tags()["images"])
    hparams = list((run_dir / "tensorboard").rglob("hparams.yml"))
    assert hparams and "train.batch_size: 32" in hparams[0].read_text()


def test_sample_pngs_every_epoch(short_run):
    samples = short_run[0] / "samples"
    for step in (16, 32):
        for name in ("samples_generator", "samples_ema", "samples_real_vs_fake"):
            with Image.open(samples / f"{name}-{step:08d}.png") as image:
                assert image.size[0] > 28 * 4
    with Image.open(samples / "samples_real_vs_fake-00000032.png") as image:
        assert image.size[0] > 2 * image.size[1]                 # real | fake, side by side


def test_sample_grids_are_written_while_training_goes_on(tmp_path, monkeypatch):
    """RunLog.image_grids hands the PNG/TensorBoard writes to a background thread: it returns while a write is
    still blocked, the next call and close() wait for it, and a failed write is raised, not lost."""
    release, returned_first = threading.Event(), []

    def slow_save(grid, path):
        returned_first.append(release.wait(timeout=10))  # False if image_grids only returned after this write
        Image.new("L", (2, 2)).save(path)

    monkeypatch.setattr(reporting, "save_image", slow_save)
    writer = SummaryWriter(str(tmp_path / "tensorboard"))
    accelerator = SimpleNamespace(is_main_process=True, get_tracker=lambda name, unwrap: writer)
    log = reporting.RunLog(accelerator, tmp_path)
    log.image_grids({"samples/ema": torch.rand(3, 8, 8)}, step=1)
    release.set()
    log.close()
    assert returned_first == [True] and (tmp_path / "samples" / "samples_ema-00000001.png").is_file()

    def failing_save(grid, path):
        raise OSError("disk full")

    monkeypatch.setattr(reporting, "save_image", failing_save)
    log = reporting.RunLog(accelerator, tmp_path)
    log.image_grids({"samples/ema": torch.rand(3, 8, 8)}, step=2)
    with pytest.raises(OSError, match="disk full"):
        log.close()
    writer.close()


def test_grey_probe_reports_levels_and_what_d_sees(short_run, mnist_root):
    run_dir = short_run[0]
    result = subprocess.run([sys.executable, "-m", "bench.grey_probe", "--checkpoint", str(run_dir),
                             "--data-root", str(mnist_root), "--levels", "32", "--batch-size", "16"],
                            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{run_dir}/checkpoints/ckpt-") and len(lines) == 6, lines
    for line in lines[1:3]:
        background, stroke = float(line.split("background ")[1].split()[0]), float(line.split("stroke ")[1])
        assert -1 <= background <= stroke <= 1
    for line, joint in zip(lines[4:], (False, True)):
        assert ("joint" in line) == joint and re.fullmatch(r"  L= 32 .*: real 0\.\d{3} lifted 0\.\d{3}", line), line


def test_health_verdict():
    assert Health(d_x=0.8, d_g_z=0.3, loss_d=1.0).verdict() == "healthy"
    assert "D is winning" in Health(d_x=0.8, d_g_z=0.02, loss_d=1.0).verdict()
    assert "collapsing" in Health(d_x=0.99, d_g_z=0.01, loss_d=0.01).verdict()


@pytest.mark.parametrize("joint", [False, True])
def test_joint_batch_makes_d_judge_reals_beside_the_fakes(joint):
    """loss.joint_batch: one BatchNorm batch of reals and fakes, so D's view of the reals depends on the fakes
    beside them (what lets it see a shift that all fakes share); with separate batches it cannot. Two D steps
    from the same state with different fakes: D(x) differs with a joint batch only."""
    from accelerate import Accelerator
    from dcgan.config import Config
    from dcgan.training import make_train_step

    accelerator = Accelerator(cpu=True)
    cfg = Config()
    cfg.loss.joint_batch = joint
    torch.manual_seed(0)
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    d_x = []
    for noise_seed in (1, 2):
        torch.manual_seed(0)
        G, D = Generator(28, nz=16, ngf=8), Discriminator(28, ndf=8)
        opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
        step = make_train_step(cfg, accelerator, G, D, opt_g, opt_d)
        stats = step(real, torch.randn(8, 16, generator=torch.Generator().manual_seed(noise_seed)))
        assert torch.isfinite(stats).all()
        d_x.append(stats[2].item())
    assert (d_x[0] != d_x[1]) == joint, d_x


def test_bf16_autocast_on_cpu(mnist_root, tmp_path):
    run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.max_steps=4",
                      "train.mixed_precision=bf16"])
    state = load_ckpt(only_run_dir(tmp_path))
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["generator"].values() if v.is_floating_point())


def one_line_error(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def test_missing_data_is_a_one_line_error(tmp_path):
    result = run_train(TINY + [f"data.root={tmp_path}/nowhere", f"train.out_dir={tmp_path}"], check=False)
    assert "MNIST not found" in one_line_error(result)


def test_fp16_without_gpu_is_a_one_line_error(mnist_root, tmp_path):
    result = run_train(TINY + [f"data.root={mnist_root}", "train.mixed_precision=fp16"], check=False)
    assert "fp16 needs a CUDA GPU" in one_line_error(result)


def test_bad_checkpoints_are_one_line_errors(short_run, mnist_root, tmp_path):
    run_dir = short_run[0]
    base = TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}"]
    assert "no such file" in one_line_error(run_train(base + [f"train.resume={tmp_path}/none.pt"], check=False))

    corrupt = tmp_path / "checkpoints" / "ckpt-00000001.pt"
    corrupt.parent.mkdir()
    corrupt.write_bytes((run_dir / "checkpoints" / "ckpt-00000032.pt").read_bytes()[:5000])  # truncated
    assert "unreadable or truncated" in one_line_error(run_train(base + [f"train.resume={corrupt}"], check=False))

    wider = run_train(base + ["model.ngf=16", f"train.resume={run_dir}/checkpoints/ckpt-00000032.pt"], check=False)
    assert "model.ngf=8" in one_line_error(wider)

    # A checkpoint outside a run dir would start a new numbered run dir: a bad one must not leave it behind.
    loose = tmp_path / "loose.pt"
    loose.write_bytes(corrupt.read_bytes())
    assert "unreadable or truncated" in one_line_error(run_train(base + [f"train.resume={loose}"], check=False))
    torch.save([1, 2], loose)
    assert "holds a list" in one_line_error(run_train(base + [f"train.resume={loose}"], check=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "loose.pt"]


def test_impossible_batch_is_a_one_line_error_and_leaves_no_run_dir(mnist_root, tmp_path):
    result = run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}/runs",
                               "train.batch_size=1024"], check=False)
    assert "train.batch_size=1024 is larger than the 512 training images" in one_line_error(result)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

"""End-to-end runs of train_ddp.py on a tiny model and a small IDX dataset, as a user runs it."""
import io
import json
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

from support import (ROOT, SHARED, TINY, RunsCode, assert_same_state, load_ckpt, make_trainer, one_line_error,
                     only_run_dir, run_train, subprocess_env, train_command, free_port)
from dcgan.models import Discriminator, Generator
from dcgan.machinery import run_log
from dcgan.config import ConfigError
from dcgan.machinery.health import MIN_SPREAD_RATIO, Health
from dcgan.train.step import StepStats

LABELS = torch.arange(8) % 10   # a batch's digits for the GAN step (unconditional models ignore them)


@pytest.fixture(scope="module")
def short_run(mnist_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    # 512 images / batch 32 = 16 steps per epoch; 2 epochs; checkpoints at 10, 16 (epoch), 20, 30, 32.
    result = run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={out}", "train.epochs=2",
                               "train.checkpoint_every=10", "train.keep_last=2"])
    return only_run_dir(out), result


def mean_image_distance(G: Generator, real: torch.Tensor) -> float:
    """How far G's mean image is from the real images' (mean absolute difference per pixel, in [-1, 1] units), for
    256 samples of G in training mode (batch statistics, as G trains)."""
    torch.manual_seed(1)
    with torch.no_grad():
        fake = G.train()(torch.randn(256, G.nz))
    return (fake.mean(0) - real.mean(0)).abs().mean().item()


def test_training_learns_the_synthetic_digits(mnist_root, tmp_path):
    """The suite's learning check without ../shared: 200 steps on the synthetic rings bring G's mean image from an
    untrained G's distance to a fraction of it (measured: 0.70 -> 0.09; G's target flipped to 0 moves it away, to
    0.87). A learning rate ten times the default's, so that 200 CPU steps are enough."""
    from dcgan.train.data import load_mnist_uint8, to_training_images
    from dcgan.models import build_models
    run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.epochs=1000",
                      "train.max_steps=200", "optim.lr_g=2e-3", "optim.lr_d=2e-3"])
    real = to_training_images(load_mnist_uint8(mnist_root), 28)
    untrained, _ = build_models(28, 16, 8, 8)
    trained = Generator(28, nz=16, ngf=8)
    trained.load_state_dict(load_ckpt(only_run_dir(tmp_path), 200)["generator"])
    before, after = mean_image_distance(untrained, real), mean_image_distance(trained, real)
    assert after < 0.3 * before, (before, after)


def test_run_dir_layout(short_run):
    run_dir, result = short_run
    assert run_dir.name == "000-mnist64"                  # numbered, named after the config file
    assert (run_dir / "config.yaml").read_text().count("image_size: 28") == 1
    log = (run_dir / "train.log").read_text()
    assert "1 process(es)" in log and "epoch 2/2 step 32" in log and "done: 32 steps" in log
    assert "CUDA graphs False" in log                    # on by default, but they need a GPU
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [(e["epoch"], e["step"]) for e in epochs] == [(1, 16), (2, 32)]   # what a search worker reads
    assert epochs[1]["health"] in log and epochs[1]["train_seconds"] > epochs[0]["train_seconds"] > 0
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

    def slow_save(grid, fp, format):
        returned_first.append(release.wait(timeout=10))  # False if image_grids only returned after this write
        Image.new("L", (2, 2)).save(fp, format=format)

    monkeypatch.setattr(run_log, "save_image", slow_save)
    writer = SummaryWriter(str(tmp_path / "tensorboard"))
    accelerator = SimpleNamespace(is_main_process=True, get_tracker=lambda name, unwrap: writer, trackers=[])
    log = run_log.RunLog(accelerator, tmp_path)
    log.image_grids({"samples/ema": torch.rand(3, 8, 8)}, step=1)
    release.set()
    log.close()
    assert returned_first == [True] and (tmp_path / "samples" / "samples_ema-00000001.png").is_file()

    def failing_save(grid, fp, format):
        raise OSError("disk full")

    monkeypatch.setattr(run_log, "save_image", failing_save)
    log = run_log.RunLog(accelerator, tmp_path)
    log.image_grids({"samples/ema": torch.rand(3, 8, 8)}, step=2)
    with pytest.raises(OSError, match="disk full"):
        log.close()
    writer.close()


def test_grey_probe_reports_levels_and_what_d_sees(short_run, mnist_root, tiny_classifier):
    run_dir = short_run[0]
    result = subprocess.run([sys.executable, "-m", "evaluation.grey_probe", "--checkpoint", str(run_dir),
                             "--data-root", str(mnist_root), "--levels", "32", "--batch-size", "16",
                             "--classifier-weights", str(tiny_classifier)],
                            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{run_dir}/checkpoints/ckpt-") and len(lines) == 9, lines
    for line in lines[1:3]:
        background, stroke = float(line.split("background ")[1].split()[0]), float(line.split("stroke ")[1])
        assert -1 <= background <= stroke <= 1
    for line, joint in zip(lines[4:6], (False, True)):
        assert ("joint" in line) == joint and re.fullmatch(r"  L= 32 .*: real 0\.\d{3} lifted 0\.\d{3}", line), line
    # the classifier's reading (what it means on real MNIST: tests/test_evaluation.py), at L=0 and each level
    assert lines[6].startswith(f"The classifier ({tiny_classifier.name}): ")
    for line, level in zip(lines[7:], (0, 32)):
        assert re.fullmatch(rf"  L={level:3d} real digits: \d+ class(es)?, top \d at [01]\.\d\d; "
                            rf"EMA samples: \d+ class(es)?, top \d at [01]\.\d\d", line), line
    # weights that are not the classifier's: one line, before any output
    checkpoint = str(sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1])
    result = subprocess.run([sys.executable, "-m", "evaluation.grey_probe", "--checkpoint", str(run_dir),
                             "--data-root", str(mnist_root), "--classifier-weights", checkpoint],
                            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert "is not an MNIST classifier of this project" in one_line_error(result) and result.stdout == ""


def test_health_verdict_judges_d_against_its_targets():
    smoothed = dict(loss_d=1.0, real_target=0.85, fake_target=0.2)
    assert Health(d_x=0.75, d_g_z=0.3, spread_ratio=0.9, **smoothed).verdict() == "healthy"
    # D on its smoothed targets is D winning outright, though 0.85/0.2 looked healthy to fixed bands
    assert "D wins outright" in Health(d_x=0.85, d_g_z=0.2, **smoothed).verdict()
    assert "D wins outright" not in Health(d_x=0.85, d_g_z=0.4, **smoothed).verdict()
    hard = dict(loss_d=0.01, real_target=1.0, fake_target=0.0)
    assert "D wins outright" in Health(d_x=0.99, d_g_z=0.01, **hard).verdict()
    assert Health(d_x=0.85, d_g_z=0.2, **hard).verdict() == "healthy"      # far from 1/0: still a contest
    collapsed = Health(d_x=0.75, d_g_z=0.3, spread_ratio=0.1, classes_covered=1, **smoothed)
    assert collapsed.verdict().count("mode collapse") == 2
    assert collapsed.scalars()["health/ok"] == 0.0 and collapsed.scalars()["health/classes_covered"] == 1
    # few classes while the samples vary as real digits do: perhaps the classifier misreading a grey background,
    # which a collapse verdict would misname; still a warning, under its own name
    misread = Health(d_x=0.62, d_g_z=0.52, spread_ratio=0.79, classes_covered=2, **smoothed)
    assert "few classes: the classifier sees 2 of 10 classes, yet the fixed-noise samples vary 0.79x" in misread.verdict()
    assert "mode collapse" not in misread.verdict() and misread.scalars()["health/ok"] == 0.0
    assert "mode collapse: the classifier sees 2" in Health(d_x=0.62, d_g_z=0.52, classes_covered=2, **smoothed).verdict()
    # what a run does not recover from: a loss that is no longer a number, or a collapse; not D winning or few classes
    nan = Health(d_x=float("nan"), d_g_z=float("nan"), loss_d=float("nan"), real_target=0.85, fake_target=0.2)
    assert nan.divergence() == "diverged: loss_D is nan, not a number any more" and nan.verdict().startswith("WARNING")
    assert collapsed.divergence().startswith("mode collapse: fixed-noise samples vary 0.10x")
    assert misread.divergence() == "" and Health(d_x=0.85, d_g_z=0.2, **smoothed).divergence() == ""


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "data" / "MNIST" / "raw").is_dir(), reason="real MNIST (../shared) absent")
def test_health_flags_a_collapsing_run_within_its_first_epoch_and_not_a_healthy_one(tmp_path):
    """150 steps of mnist32 with the seeds' recipe on real MNIST: healthy; with loss.joint_batch=true (which needs
    D's BatchNorm, as that recipe has) it collapses from the start (every sample one blob, D on its targets
    0.85/0.2), which the old fixed bands called healthy."""
    verdicts, spreads = {}, {}
    for joint in (False, True):
        out = tmp_path / f"joint-{joint}"
        run_train(["--config", "configs/mnist32_seed.yaml", f"data.root={SHARED / 'data'}", f"train.out_dir={out}",
                   "train.max_steps=150", f"loss.joint_batch={joint}", "data.download=false"])
        run_dir = only_run_dir(out)
        verdicts[joint] = (run_dir / "train.log").read_text().split("epoch 1/5 step 150: ")[1].splitlines()[0]
        events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
        spreads[joint] = events.Scalars("health/spread_ratio")[0].value
    assert verdicts[False] == "healthy" and spreads[False] > MIN_SPREAD_RATIO, (verdicts, spreads)
    assert "D wins outright" in verdicts[True] and "mode collapse" in verdicts[True], (verdicts, spreads)


@pytest.mark.parametrize("joint", [False, True])
def test_joint_batch_makes_d_judge_reals_beside_the_fakes(joint):
    """loss.joint_batch: one BatchNorm batch of reals and fakes, so D's view of the reals depends on the fakes
    beside them (what lets it see a shift that all fakes share); with separate batches it cannot. Two D steps
    from the same state with different fakes: D(x) differs with a joint batch only."""
    torch.manual_seed(0)
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    d_x = []
    for noise_seed in (1, 2):
        step = tiny_gan_step([f"loss.joint_batch={joint}"])
        stats = step(real, LABELS, torch.randn(8, 16, generator=torch.Generator().manual_seed(noise_seed)))
        assert torch.isfinite(stats.values).all()
        d_x.append(stats.values[StepStats.NAMES.index("D_x")].item())
    assert (d_x[0] != d_x[1]) == joint, d_x


def tiny_gan_step(overrides: list[str]):
    """The trainer's GANStep on the TINY model, on the CPU, from seed 0."""
    from accelerate import Accelerator
    from dcgan.config import load_config
    from dcgan.models import build_models
    from dcgan.train.step import build_gan_step
    cfg = load_config(None, [o for o in TINY if not o.startswith("data.download")] + overrides)
    torch.manual_seed(0)
    G, D = build_models(28, 16, 8, 8)
    return build_gan_step(cfg, Accelerator(cpu=True), G, D, cuda_graphs=False)


@pytest.mark.parametrize("compile", [False, True])
def test_train_compile_compiles_g_and_d(compile):
    """What nn.Module.compile changes, read without compiling (a compiled step takes half a minute on a CPU: the
    slow tier's tests/test_speed.py trains one)."""
    step = tiny_gan_step([f"train.compile={str(compile).lower()}", "train.channels_last=false"])
    for model in (step.G, step.D):
        assert (step.accelerator.unwrap_model(model)._compiled_call_impl is not None) == compile


def test_one_step_updates_d_then_g_and_names_its_stats():
    """D's update comes first and sees the fakes of the G before the step; G's update then moves G only."""
    step = tiny_gan_step(["train.channels_last=false", "optim.fused=false"])
    G, D = step.G, step.D
    before_g = [p.detach().clone() for p in G.parameters()]
    before_d = [p.detach().clone() for p in D.parameters()]
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    z = torch.randn(8, 16)
    with torch.no_grad():
        fake_before = G(z)  # the fakes D trains on (BatchNorm in training mode, as in the step)
        real_logits, fake_logits = D(real), D(fake_before)
    expected_loss_d = step.objective.loss.discriminator(real_logits, fake_logits)
    stats = step(real, LABELS, z)
    named = stats.mean(step.accelerator, count=1)
    assert list(named) == ["loss_D", "loss_G", "D_x", "D_G_z"]
    assert named["loss_D"] == pytest.approx(expected_loss_d.item(), rel=1e-5)
    assert named["D_x"] == pytest.approx(torch.sigmoid(real_logits).mean().item(), rel=1e-5)
    assert named["D_G_z"] == pytest.approx(torch.sigmoid(fake_logits).mean().item(), rel=1e-5)
    assert all(not torch.equal(a, b) for a, b in zip(before_d, D.parameters()))   # both networks moved
    assert all(not torch.equal(a, b) for a, b in zip(before_g, G.parameters()))
    assert all(p.requires_grad for p in D.parameters())                            # D unfrozen after G's phase
    # G's update used D after D's update: its loss is -log D_new(G_old(z))
    with torch.no_grad():
        assert named["loss_G"] == pytest.approx(step.objective.loss.generator(D(fake_before)).item(), rel=1e-4)


def test_hinge_loss_values_and_a_hinge_step():
    from dcgan.train.losses import Hinge
    loss = Hinge()
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # reals past the +1 margin and fakes past -1 cost nothing; the rest linearly
    assert loss.discriminator(real, fake).item() == pytest.approx((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 2.0) / 3)
    assert loss.generator(fake).item() == pytest.approx(-(-2.0 + 0.0 + 1.0) / 3)
    assert loss.real_target == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item()) == 1 - loss.fake_target
    step = tiny_gan_step(["loss.name=hinge"])
    stats = step(torch.rand(8, 1, 28, 28) * 2 - 1, LABELS, torch.randn(8, 16))
    assert isinstance(step.objective.loss, Hinge) and torch.isfinite(stats.values).all()


def bce(logit: float, target: float) -> float:
    """Binary cross-entropy of one logit against a target, written out: -(t log p + (1 - t) log(1 - p))."""
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


@pytest.mark.parametrize("smoothing, real_target, fake_target", [(False, 1.0, 0.0), (True, 0.85, 0.2)])
def test_default_bce_losses_have_their_closed_forms(smoothing, real_target, fake_target):
    """The default loss against hand-computed values: D towards (smoothed) real/fake targets, G towards 1
    (the non-saturating -log D(G(z))), whatever D's targets are."""
    from dcgan.config import load_config
    from dcgan.train.losses import build_loss
    cfg = load_config(None, [f"loss.label_smoothing={str(smoothing).lower()}", "loss.real_label=0.85",
                             "loss.fake_label=0.2"])
    loss = build_loss(cfg.loss)
    real, fake = [2.0, -0.5, 0.0], [-3.0, 1.0]
    expected_d = (sum(bce(x, real_target) for x in real) / len(real)
                  + sum(bce(x, fake_target) for x in fake) / len(fake))
    expected_g = sum(-math.log(1 / (1 + math.exp(-x))) for x in fake) / len(fake)
    assert loss.discriminator(torch.tensor(real), torch.tensor(fake)).item() == pytest.approx(expected_d, rel=1e-6)
    assert loss.generator(torch.tensor(fake)).item() == pytest.approx(expected_g, rel=1e-6)
    assert (loss.real_target, loss.fake_target) == (real_target, fake_target)   # what the health verdict reads
    # fp16 logits (autocast) give the fp32 loss
    assert loss.generator(torch.tensor(fake, dtype=torch.float16)).dtype == torch.float32


def test_trainer_state_dict_round_trip(mnist_root, tmp_path):
    """Trainer.state_dict() -> load_state_dict() into a fresh Trainer -> state_dict(): the same state, and the two
    trainers take the same next step."""
    from dcgan.config import load_config

    cfg = load_config(None, TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}"])
    first = make_trainer(cfg, mnist_root, tmp_path / "first")
    for _ in range(3):
        first.step_fn(*first.batches.batch(first.step), first.noise.next())
        first.ema.update(first.G, first.step)
        first.step += 1
    buffer = io.BytesIO()  # through bytes, as a checkpoint file goes: nothing shared with `first`, and data only
    torch.save(first.state_dict(), buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    second = make_trainer(cfg, mnist_root, tmp_path / "second")
    second.load_state_dict(saved, tmp_path / "ckpt.pt")
    again = second.state_dict()
    assert again["step"] == 3 and again["epoch"] == 0 and again["config"] == saved["config"]
    assert_same_state(saved, again)
    for t in (first, second):
        t.step_fn(*t.batches.batch(t.step), t.noise.next())
    assert all(torch.equal(a, b) for a, b in zip(first.G.parameters(), second.G.parameters()))
    first.log.close()
    second.log.close()


def test_weights_and_biases_offline_gets_the_scalars_images_and_config(mnist_root, tmp_path):
    pytest.importorskip("wandb", reason="wandb is optional: pip install -r requirements-wandb.txt")
    env = {**subprocess_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    command = train_command(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.epochs=1",
                                    "train.trackers=tensorboard,wandb", "train.wandb_group=study"])
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    records = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(records) == 1
    data = records[0].read_bytes()   # protobuf records: the logged keys are in it as plain strings
    for key in (b"loss/D", b"D(G(z))", b"perf/img_per_s", b"health/ok", b"train.batch_size", b"dcgan-ddp",
                b"study", run_dir.name.encode()):
        assert key in data, key
    images = {p.name.split("_1")[0] for p in records[0].parent.glob("files/media/images/samples/*.png")}
    assert images == {"generator", "ema", "real_vs_fake"}
    assert (run_dir / "tensorboard").is_dir()                          # TensorBoard is always on


def test_choosing_an_uninstalled_tracker_is_a_one_line_error(mnist_root, tmp_path, monkeypatch):
    from dcgan.config import load_config
    from dcgan.train.plan import check_trackers
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install -r requirements-wandb.txt"):
        check_trackers(load_config(None, ["train.trackers=tensorboard,wandb"]))
    with pytest.raises(ConfigError, match="TensorBoard is always on"):
        load_config(None, ["train.trackers=wandb"])


def test_bf16_autocast_on_cpu(mnist_root, tmp_path):
    run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.max_steps=4",
                      "train.mixed_precision=bf16"])
    state = load_ckpt(only_run_dir(tmp_path))
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["generator"].values() if v.is_floating_point())


def test_missing_data_is_a_one_line_error(tmp_path):
    result = run_train(TINY + [f"data.root={tmp_path}/nowhere", f"train.out_dir={tmp_path}"], check=False)
    assert "MNIST not found" in one_line_error(result)


def test_fp16_without_gpu_is_a_one_line_error(mnist_root, tmp_path):
    result = run_train(TINY + [f"data.root={mnist_root}", "train.mixed_precision=fp16"], check=False)
    assert "fp16 needs a CUDA GPU" in one_line_error(result)


def test_bad_checkpoints_are_one_line_errors(short_run, mnist_root, tmp_path, capsys):
    """Through train_ddp.main in this process (the command's own process is tested with a config error)."""
    from train_ddp import main

    def error(*overrides: str) -> str:
        status = main(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", *overrides])
        return one_line_error(subprocess.CompletedProcess(overrides, status, "", capsys.readouterr().err))

    run_dir = short_run[0]
    assert "no such file" in error(f"train.resume={tmp_path}/none.pt")
    corrupt = tmp_path / "checkpoints" / "ckpt-00000001.pt"
    corrupt.parent.mkdir()
    corrupt.write_bytes((run_dir / "checkpoints" / "ckpt-00000032.pt").read_bytes()[:5000])  # truncated
    assert "unreadable or truncated" in error(f"train.resume={corrupt}")
    assert "model.ngf=8" in error("model.ngf=16", f"train.resume={run_dir}/checkpoints/ckpt-00000032.pt")
    # A checkpoint outside a run dir would start a new numbered run dir: a bad one must not leave it behind.
    loose = tmp_path / "loose.pt"
    loose.write_bytes(corrupt.read_bytes())
    assert "unreadable or truncated" in error(f"train.resume={loose}")
    torch.save([1, 2], loose)
    assert "holds a list" in error(f"train.resume={loose}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "loose.pt"]


def test_a_checkpoint_that_would_run_code_is_refused_by_every_loader(short_run, mnist_root, tmp_path):
    marker = tmp_path / "code-ran"
    state = load_ckpt(short_run[0])
    state["config"]["name"] = RunsCode(marker)
    crafted = tmp_path / "run" / "checkpoints" / "ckpt-00000032.pt"
    crafted.parent.mkdir(parents=True)
    torch.save(state, crafted)
    commands = {"resume": train_command(TINY + [f"data.root={mnist_root}", f"train.resume={crafted}"]),
                "evaluation.fid": [sys.executable, "-m", "evaluation.fid", "--checkpoint", str(crafted)],
                "grey_probe": [sys.executable, "-m", "evaluation.grey_probe", "--checkpoint", str(tmp_path / "run"),
                               "--data-root", str(mnist_root)],
                "dcgan.generate": [sys.executable, "-m", "dcgan.generate", "--checkpoint", str(crafted), "--out",
                                   str(tmp_path / "grid.png")],
                "dcgan.serve": [sys.executable, "-m", "dcgan.serve", "--checkpoint", str(crafted), "--port",
                                str(free_port())]}
    for name, command in commands.items():
        result = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert "refused, since loading it could run code" in one_line_error(result), name
        assert not marker.exists(), f"{name} ran the checkpoint's code"
    torch.load(crafted, weights_only=False)   # the file really carries code: this load runs it
    assert marker.exists()


def test_impossible_batch_is_a_one_line_error_and_leaves_no_run_dir(mnist_root, tmp_path):
    result = run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}/runs",
                               "train.batch_size=1024"], check=False)
    assert "train.batch_size=1024 is larger than the 512 training images" in one_line_error(result)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

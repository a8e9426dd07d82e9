"""Speed options are switches of the one training loop: each must train, and keep checkpoints portable."""
import argparse
import re
import subprocess
import sys

import pytest
import torch

from support import ROOT, TINY, load_ckpt, only_run_dir, run_train, subprocess_env
from bench.harness import add_step_arguments, peak_tflops, step_config
from dcgan.config import load_config
from dcgan.models import Generator, build_models, conv_flops, step_flops


def test_all_speed_switches_off_and_on_train(mnist_root, tmp_path):
    for name, switches in (("off", ["train.channels_last=false", "optim.fused=false"]),
                           ("on", ["train.channels_last=true", "optim.fused=true", "train.mixed_precision=bf16"])):
        run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path / name}", "train.max_steps=3", *switches])
        state = load_ckpt(only_run_dir(tmp_path / name))
        assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["generator"].values()
                                          if v.is_floating_point())


def test_rmsprop_and_extra_layers_train_and_checkpoints_name_them(mnist_root, tmp_path):
    run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.max_steps=3", "optim.name=rmsprop",
                      "optim.momentum=0.5", "model.g_extra_layers=1", "model.d_extra_layers=1"])
    state = load_ckpt(only_run_dir(tmp_path))
    assert state["step"] == 3 and state["config"]["optim"]["name"] == "rmsprop"
    assert {"square_avg", "momentum_buffer"} <= set(state["opt_g"]["state"][0])        # RMSprop's state, not Adam's
    assert state["opt_g"]["param_groups"][0]["momentum"] == 0.5
    G = Generator(28, nz=16, ngf=8, extra_layers=1)
    G.load_state_dict(state["generator"])
    resumed = run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.resume=latest",
                                "model.g_extra_layers=1", "model.d_extra_layers=1"], check=False)
    assert resumed.returncode == 2 and "set optim.name=rmsprop to resume it" in resumed.stderr


@pytest.mark.slow  # torch.compile compiles for seconds before its first step: outside the ~10-minute suite
def test_compiled_models_keep_plain_checkpoint_keys(mnist_root, tmp_path):
    run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.max_steps=2", "train.compile=true"])
    run_dir = only_run_dir(tmp_path)
    G = Generator(28, nz=16, ngf=8)
    G.load_state_dict(load_ckpt(run_dir)["generator"])           # no "_orig_mod." prefixes
    G.load_state_dict(torch.load(run_dir / "generator.pt", weights_only=True))


def test_conv_flop_count():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert conv_flops(conv, torch.zeros(2, 3, 10, 10)) == 2 * (2 * 8 * 10 * 10) * 3 * 9
    G, D = build_models(64, 100, 64, 64)
    per_image = step_flops(load_config(ROOT / "configs" / "mnist64.yaml"), batch=1)
    assert per_image == 3 * conv_flops(G, torch.zeros(1, 100)) + 8 * conv_flops(D, torch.zeros(1, 1, 64, 64))
    assert 2.0e9 < per_image < 2.5e9   # the 64x64 DCGAN: ~0.2 GFLOP per image for a G or a D forward


def test_gpu_peak_follows_the_device_name_and_cudnn_tf32(monkeypatch):
    cuda = torch.device("cuda")
    for name, precision, peak in (("NVIDIA H100 PCIe", "fp16", 756.0), ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
                                  ("NVIDIA H200", "fp16", 989.0), ("Some Other GPU", "fp16", None)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert peak_tflops(cuda, precision) == peak
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)    # PyTorch's default for convolutions
    assert peak_tflops(cuda, "no") == 495.0
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert peak_tflops(cuda, "no") == 67.0


def test_benchmark_prints_the_ratio_line_other_scripts_read(mnist_root):
    model = [o for o in TINY if o.startswith(("data.image_size", "model."))]
    result = subprocess.run([sys.executable, "-m", "bench.speed", "--config", "configs/mnist32.yaml", "--data-root",
                             str(mnist_root), "--batch-size", "32", "--seconds", "0.3", "--rounds", "2", "--warmup", "1",
                             *model], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "28px, batch 32" in lines[0] and re.fullmatch(r"ratio ours/reference: \d+\.\d\d", lines[-1]), lines
    for name in ("ours", "reference"):
        rounds = next(l for l in lines if l.strip().startswith(f"{name}:") and "img/s" in l).split("rounds of ")[1]
        assert len(rounds.split(":")[1].split(";")[0].split(",")) == 2       # --rounds 2, each timed


@pytest.mark.parametrize("script, args, says", [
    ("bench.speed", ["--data-root", "{tmp}", "--seconds", "0.1"], "MNIST not found"),
    ("bench.speed", ["train.bogus=1"], "unknown key 'train.bogus'"),
    ("bench.speed", ["--precision", "fp8"], "train.mixed_precision='fp8' is not one of"),
    ("bench.speed", ["--grid", "--batch-sizes", "128,0"], "train.batch_size=0 must be a positive integer"),
    ("bench.speed", ["--grid", "--batch-sizes", "128,big"], "--batch-sizes 128,big: give integers"),
    ("bench.speed", ["--precision", "fp16", "--cpu"], "fp16 needs a CUDA GPU"),  # not fp32 labelled fp16
    ("bench.throughput", ["model.ngf=-1"], "model.ngf"),
    ("bench.profile_step", ["--batch-size", "0"], "train.batch_size=0"),
])
def test_benchmark_mistakes_are_one_line_errors(script, args, says, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = subprocess.run([sys.executable, "-m", script, *args], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == "", (result.stdout, result.stderr[-2000:])
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1 and says in result.stderr


def test_benchmark_takes_fp32_for_no_mixed_precision():
    parser = argparse.ArgumentParser()
    add_step_arguments(parser)
    cfg, device, precision = step_config(parser.parse_args(["--precision", "fp32", "--cpu"]))
    assert precision == cfg.train.mixed_precision == "no" and device.type == "cpu"


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    model = [o for o in TINY if o.startswith(("data.image_size", "model."))]
    result = subprocess.run([sys.executable, "-m", script, *args, *model], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow  # a benchmark tool's run, not the training path: outside the ~10-minute suite
def test_grid_table_has_a_row_per_cell_and_says_why_a_cell_failed():
    out = bench("bench.speed", "--grid", "--precisions", "fp32,fp16", "--batch-sizes", "16", "--grid-options",
                "plain", "--cpu", "--seconds", "0.2", "--rounds", "1", "--warmup", "1").stdout.splitlines()
    assert out[0].split() == ["precision", "batch", "options", "img/s", "TFLOP/s", "peak", "MiB"] and len(out) == 3
    precision, batch, options, rate, tflops, mib = out[1].split()
    assert (precision, batch, options) == ("fp32", "16", "plain") and float(rate) > 0 and float(tflops) > 0 and int(mib) > 0
    assert out[2].split()[:4] == ["fp16", "16", "plain", "failed"] and "fp16 needs a CUDA GPU" in out[2]


@pytest.mark.slow  # a benchmark tool's run, not the training path: outside the ~10-minute suite
def test_profile_throughput_and_epoch_end_scripts_run():
    profile = bench("bench.profile_step", "--cpu", "--batch-size", "16", "--steps", "2", "--warmup", "1").stdout
    assert re.search(r"per step: wall \d+\.\d+ ms; \d+ img/s", profile) and "convolution" in profile
    throughput = bench("bench.throughput", "--steps", "2", "--warmup", "1", "--repeats", "1").stdout
    assert re.search(r"\[28px ngf 8 ndf 8 batch 128 precision (no|bf16)\] on .*: \d+ img/s \(median of \d+\), peak", throughput)
    epoch_end = bench("bench.epoch_end", "--repeats", "1").stdout.splitlines()
    rows = [line.split(" s  ", 1) for line in epoch_end[1:5]]
    assert epoch_end[0].startswith("configs/mnist64.yaml: 28px")
    assert [name.split()[0] for _, name in rows] == ["sample", "grid", "grid", "checkpoint"]
    assert float(rows[3][0]) > 0 and re.fullmatch(r"checkpoint size \d+\.\d MiB", epoch_end[5])

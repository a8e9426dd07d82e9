import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, subprocess_env
from dcgan.config import ConfigError, load_config, parse_override

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_paper_config_values():
    cfg = load_config(ROOT / "configs" / "mnist64.yaml")
    assert (cfg.data.image_size, cfg.model.nz, cfg.model.ngf, cfg.model.ndf) == (64, 100, 64, 64)
    assert (cfg.optim.beta1, cfg.optim.lr_g, cfg.train.batch_size) == (0.5, 2e-4, 128)
    assert (cfg.loss.real_label, cfg.loss.fake_label) == (0.85, 0.2)


def test_overrides_are_typed():
    cfg = load_config(ROOT / "configs" / "mnist32.yaml",
                      ["train.epochs=2", "data.root=../shared/data", "optim.lr_g=1e-4", "loss.label_smoothing=false"])
    assert cfg.train.epochs == 2 and cfg.data.root == "../shared/data"
    assert cfg.optim.lr_g == 1e-4 and isinstance(cfg.optim.lr_g, float)
    assert cfg.loss.label_smoothing is False
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": "3"}}}
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(None, ["train.mixed_precision=bf16", "train.resume="]).train.resume == ""


@pytest.mark.parametrize("override, names", [
    ("train.epochz=2", "train.epochz"),
    ("trian.epochs=2", "trian"),
    ("train.epochs=two", "train.epochs"),
    ("train.epochs=0", "train.epochs"),
    ("data.image_size=48", "data.image_size"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("train.compile_mode=fast", "train.compile_mode"),
    ("train.compile_mode=reduce-overhead", "train.cuda_graphs=true"),   # its CUDA graphs fail on the GAN step
    ("train.cuda_graphs=sometimes", "train.cuda_graphs"),
    ("eval.target=-1", "eval.target"),
    ("optim.lr_d=-1", "optim.lr_d"),
    ("optim.beta1=1.5", "optim.beta1"),
    ("model.sync_bn=maybe", "model.sync_bn"),
    ("optim.name=sgd", "optim.name"),
    ("optim.alpha=1", "optim.alpha"),
    ("model.g_extra_layers=-1", "model.g_extra_layers"),
    ("loss.name=wasserstein", "loss.name"),
    ("train=3", "train"),
    ("epochs", "key=value"),
])
def test_bad_values_name_the_key(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "mnist32.yaml", [override])
    message = str(err.value)
    assert names in message and "\n" not in message


def test_every_accepted_loss_name_builds_its_loss():
    """config.py validates loss.name without importing the training code; each name it accepts must be a loss."""
    from dcgan.config import LOSS_NAMES
    from dcgan.train.losses import LOSSES, build_loss
    assert sorted(LOSS_NAMES) == sorted(LOSSES)
    for name in LOSS_NAMES:
        assert type(build_loss(load_config(overrides=[f"loss.name={name}", "model.d_norm=none"]).loss)) is LOSSES[name]


def test_unquoted_no_in_yaml_means_the_string(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n  epochs: 3\nloss:\n  label_smoothing: off\n")
    cfg = load_config(path)
    assert cfg.train.mixed_precision == "no" and cfg.train.epochs == 3 and cfg.loss.label_smoothing is False


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("train:\n  batch_sise: 64\n")
    with pytest.raises(ConfigError, match="unknown key 'train.batch_sise'"):
        load_config(bad)


def cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "train_ddp.py"), *args], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def test_cli_error_is_one_line():
    result = cli("--config", "configs/mnist32.yaml", "train.batch_size=abc")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: train.batch_size: expected an integer, got 'abc'"]
    assert cli("--config", "configs/nope.yaml").stderr.startswith("error: config file configs/nope.yaml does not exist")


def test_options_and_overrides_mix_in_any_order():
    result = cli("train.epochs=2", "--config", "configs/mnist32.yaml", "train.seed=3", "--dry-run")
    assert result.returncode == 0, result.stderr
    import yaml
    resolved = yaml.safe_load(result.stdout)
    assert (resolved["train"]["epochs"], resolved["train"]["seed"], resolved["data"]["image_size"]) == (2, 3, 32)


def test_accelerate_launch_flags_fill_in_auto_precision(monkeypatch):
    from dcgan.train.plan import resolve_precision, use_cpu
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    cfg = load_config(None, [])
    assert cfg.train.mixed_precision == "auto"       # the default
    assert use_cpu(cfg)                              # `accelerate launch --mixed_precision bf16 --cpu`
    assert resolve_precision(cfg, cpu=False) == "bf16"
    cfg = load_config(None, ["train.mixed_precision=no"])
    assert resolve_precision(cfg, cpu=False) == "no"  # an explicit config value wins
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision(load_config(None, []), cpu=True)


@pytest.mark.parametrize("cuda, bf16_units, expected", [(True, False, "fp16"), (False, True, "bf16"),
                                                        (False, False, "no")])
def test_auto_precision_follows_the_device(monkeypatch, tmp_path, cuda, bf16_units, expected):
    from dcgan.train import plan
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx512f" + (" avx512_bf16" if bf16_units else "") + "\n")
    assert plan.cpu_has_native_bf16(cpuinfo) == bf16_units
    monkeypatch.setattr(plan, "cpu_has_native_bf16", lambda: bf16_units)
    assert plan.resolve_precision(load_config(None, []), cpu=not cuda) == expected


def test_run_records_and_logs_the_resolved_precision(mnist_root, tmp_path):
    """auto resolves before the run starts: config.yaml and the first log line say what ran, never 'auto'."""
    from support import TINY, only_run_dir, run_train
    overrides = [o for o in TINY if not o.startswith("train.mixed_precision")]
    run_train(overrides + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.max_steps=2"])
    run_dir = only_run_dir(tmp_path)
    flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    expected = "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "no"    # read here, not by dcgan.train.plan
    assert f"mixed_precision: {expected}" in (run_dir / "config.yaml").read_text()
    assert f"precision {expected}," in (run_dir / "train.log").read_text()


def test_batch_must_split_over_processes_and_fit_the_dataset():
    from dcgan.train.plan import plan_run
    cfg = load_config(None, ["train.batch_size=128", "train.epochs=2"])
    plan = plan_run(cfg, world_size=2, rank=1, num_images=1000, cuda=False)
    assert (plan.local_batch, plan.steps_per_epoch, plan.total_steps, plan.cuda_graphs) == (64, 7, 14, False)
    with pytest.raises(ConfigError, match="train.batch_size=128 is not divisible by the world size 3"):
        plan_run(cfg, world_size=3, rank=0, num_images=1000, cuda=False)
    with pytest.raises(ConfigError, match="train.batch_size=128 is larger than the 100 training images"):
        plan_run(cfg, world_size=1, rank=0, num_images=100, cuda=False)


def test_gpu_only_option_conflicts_are_one_line_errors():
    """Checked where a GPU is in use, before the first step (callable here: the GPU's answer for graphs is passed)."""
    from dcgan.train.plan import check_cuda_options

    def check(overrides):
        check_cuda_options(load_config(None, overrides), graphs=True)

    check(["train.mixed_precision=fp16"])                       # the defaults: fused Adam, no compile
    check(["optim.fused=false"])                                # an unfused fp32 step captures fine
    check(["train.compile=true", "train.channels_last=false"])
    for overrides, names in ((["train.mixed_precision=fp16", "optim.fused=false"], "optim.fused=true"),
                             (["train.mixed_precision=fp16", "optim.name=rmsprop"], "optim.name=adam"),
                             (["train.compile=true"], "train.channels_last=false"),
                             (["model.d_norm=none", "loss.r1_gamma=1"], "loss.r1_every=1"),
                             (["optim.lr_decay=linear"], "optim.lr_decay=none"),
                             (["optim.d_steps=2"], "optim.d_steps=1")):
        with pytest.raises(ConfigError) as err:
            check(overrides)
        assert names in str(err.value) and "\n" not in str(err.value)

"""Typed run configuration: YAML file -> dataclasses, dotted command-line overrides, validation.

Every error a user can make here (unknown key, wrong type, impossible value) raises ConfigError with
one line that names the key and says what is allowed; train_ddp.py prints it and exits with status 2.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evaluation import registry

from dcgan.models import D_CONDITIONINGS, D_NORMS

IMAGE_SIZES = (28, 32, 64)
OPTIMIZERS = ("adam", "rmsprop")
LOSS_NAMES = ("bce", "hinge", "wgan")  # each a strategy class in dcgan/train/losses.py's LOSSES
LR_DECAYS = ("none", "linear")
TRACKERS = ("tensorboard", "wandb")
# auto: fp16 on CUDA, bf16 on a CPU with native bf16 units, else fp32 ("no"); see dcgan/train/plan.py
PRECISIONS = ("auto", "no", "fp16", "bf16")
# torch.compile's modes without CUDA graphs of its own: those (reduce-overhead, max-autotune) fail on the GAN step,
# where D runs three times between optimizer steps; train.cuda_graphs captures the whole step instead.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message is one line."""


@dataclass
class DataConfig:
    root: str = "data"            # torchvision layout: <root>/MNIST/raw/*-ubyte
    image_size: int = 64          # 28, 32 or 64; images are resized once, at load time
    download: bool = True         # try the download when files are missing (needs internet)


@dataclass
class ModelConfig:
    nz: int = 100                 # latent size
    ngf: int = 64                 # generator width
    ndf: int = 64                 # discriminator width
    g_extra_layers: int = 0       # stride-1 conv + BN + ReLU layers before G's output layer (DCGAN's n_extra_layers)
    g_output_bias: float = 0.0    # G's output layer learns a bias that starts here (-3: black) (0: no bias, DCGAN)
    d_extra_layers: int = 0       # the same in D, after its input layer, at the image's half resolution
    sync_bn: bool = True          # synchronize BatchNorm statistics across processes (world size > 1)
    conditional: bool = False     # G draws the digit it is given, D judges image and digit
    d_conditioning: str = "projection"  # projection | input: how a conditional D is told the digit (dcgan/models.py)
    d_norm: str = "batch"         # batch | none: BatchNorm in D's hidden layers (none for gradient penalties)
    spectral_norm: bool = False   # spectral normalization on D's convolutions


@dataclass
class OptimConfig:
    name: str = "adam"            # adam | rmsprop
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5            # Adam
    beta2: float = 0.999          # Adam
    alpha: float = 0.99           # RMSprop: smoothing of the squared-gradient average
    momentum: float = 0.0         # RMSprop
    lr_decay: str = "none"        # none | linear: both learning rates fall linearly to 0 over the run's steps
    d_steps: int = 1              # D updates per G update: G learns on every d_steps-th batch (WGAN's n_critic)
    fused: bool = True            # fused Adam kernels (CPU and CUDA); RMSprop has none: its multi-tensor kernels


@dataclass
class LossConfig:
    name: str = "bce"             # bce: non-saturating BCE on D's logits (DCGAN) | hinge (label settings unused)
    label_smoothing: bool = True  # targets real_label / fake_label for D instead of 1 / 0
    real_label: float = 0.85
    fake_label: float = 0.2
    # D sees each step's real and fake images as one batch: its BatchNorm statistics then span both, so a shift
    # that every fake shares (a grey background) stays visible; separate batches normalize it away (BENCHMARKS.md)
    joint_batch: bool = False
    gp_weight: float = 10.0       # loss.name=wgan: weight of the gradient penalty on real/fake mixtures (WGAN-GP)
    r1_gamma: float = 0.0         # > 0: R1 penalty, gamma/2 * |grad D(x)|^2 on real images (any loss)
    r1_every: int = 16            # lazy R1: every N steps, weighted N times (StyleGAN2)


@dataclass
class TrainConfig:
    epochs: int = 30
    max_steps: int = 0            # stop after this many optimizer steps in total (0: no limit)
    batch_size: int = 128         # global batch, split evenly over processes
    seed: int = 0
    mixed_precision: str = "auto" # auto | no (fp32) | fp16 | bf16; `accelerate launch --mixed_precision` fills in auto
    cpu: bool = False             # force CPU even when CUDA is present
    channels_last: bool = True    # NHWC convolutions: faster on CPUs (oneDNN) and tensor cores
    compile: bool = False         # torch.compile G and D (slow first steps; see BENCHMARKS.md)
    compile_mode: str = "default" # default | max-autotune-no-cudagraphs
    cuda_graphs: bool = True      # one CUDA process: capture the whole step once, replay it (one launch per step)
    ema_decay: float = 0.999      # EMA of the generator's weights (samples and exported generator)
    ema_start: int = 0            # steps during which the EMA copies G (decay 0) before it starts averaging
    log_every: int = 50           # steps between scalar logs (the only host syncs in the loop)
    checkpoint_every: int = 1000  # steps between checkpoints (one is also written at each epoch end)
    keep_last: int = 3            # checkpoints kept in <run_dir>/checkpoints
    out_dir: str = "runs"         # run directories are created here, auto-numbered
    run_dir: str = ""             # use exactly this run directory instead (requeued cluster jobs)
    resume: str = ""              # "" | latest | path to a checkpoint file
    num_samples: int = 64         # images in the fixed-noise sample grid
    trackers: str = "tensorboard" # tensorboard | tensorboard,wandb (pip install -r requirements-wandb.txt)
    wandb_project: str = "dcgan-ddp"
    wandb_group: str = ""         # W&B runs of one study side by side (e.g. a sweep's name)


@dataclass
class EvalConfig:
    every_epochs: int = 0         # evaluate the EMA generator every N epochs on the main process (0: off)
    metrics: str = "clf_fid,coverage"   # see `python -m evaluation.fid --help`; classifier metrics are CPU-cheap
    num_samples: int = 2000
    reference: str = "test"       # MNIST split to compare with
    best_metric: str = "clf_fid"  # keep <run_dir>/best.pt by this metric
    patience: int = 0             # stop after this many evaluations without improvement (0: never)
    target: float = 0.0           # stop once best_metric reaches this value, e.g. fid <= 10 (0: off)
    classifier_weights: str = ""  # "" = newest in the cache (python -m evaluation.classifier)
    inception_weights: str = ""   # for fid/kid offline


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = "dcgan"           # used in the run directory's name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict:
        """{'train.epochs': 30, ...}: for TensorBoard hyperparameters."""
        return flatten(self.to_dict())


def flatten(config: dict) -> dict:
    """A config as nested dicts (a run's config.yaml) -> {'train.epochs': 30, ..., 'name': 'mnist32'}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------
# Building a Config from nested dicts (YAML) and "a.b=value" strings (command line)

def _allowed_keys(cls) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _coerce(key: str, value, typ):
    """Check or convert one value to the field's declared type; ConfigError names the key otherwise."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ in (int, float):
        expected, accepted = ("an integer", (int, str)) if typ is int else ("a number", (int, float, str))
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
        try:
            return typ(value)
        except ValueError:
            raise ConfigError(f"{key}: expected {expected}, got {value!r}") from None
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {str(value).lower()}")
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config field type {typ} for {key}")


def _update(obj, values: dict, prefix: str = "") -> None:
    """Set fields of dataclass `obj` from a nested dict, recursing into sub-configs."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            where = f"section '{prefix[:-1]}'" if prefix else "the top level"
            raise ConfigError(f"unknown key '{key}': {where} allows {_allowed_keys(type(obj))}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: is a section, expected keys ({_allowed_keys(type(current))})")
            _update(current, value, prefix=f"{key}.")
        else:
            setattr(obj, name, _coerce(key, value, hints[name]))


def parse_override(text: str) -> dict:
    """'train.epochs=2' -> {'train': {'epochs': '2'}}; the field's type converts the text (see _coerce)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. train.epochs=2)")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key (e.g. train.epochs=2)")
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value.strip()
    return nested


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where yes/no/on/off are booleans (`mixed_precision: no` would be False).
    Read only true/false as booleans, as YAML 1.2 does; the field types convert everything else."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def read_yaml(path: str | Path):
    """A YAML file read as the configs are (YAML 1.2 booleans): sweep files, a run's config.yaml."""
    return yaml.load(Path(path).read_text(), Loader=_Yaml12Loader)


def recorded_settings(path: str | Path) -> dict:
    """A run's config.yaml as flat settings ({'train.epochs': 3, ...}). A key the run predates takes its default:
    options are added with defaults that keep the earlier behaviour, so that is what the run did."""
    return {**Config().flat(), **flatten(read_yaml(path) or {})}


def config_from_dict(values: dict) -> Config:
    """A run's recorded config (a checkpoint's, or its config.yaml) as a Config; keys the run predates take their
    defaults (as in recorded_settings). Not validated: the run already was, under the rules of its day."""
    cfg = Config()
    _update(cfg, values)
    return cfg


def read_config_file(path: str | Path) -> dict:
    """A config file's sections as a dict, named after the file unless it names itself."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (shipped configs are in configs/)")
    try:
        values = read_yaml(path) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, optim, loss, train)")
    values.setdefault("name", path.stem)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Defaults <- YAML file <- overrides, then validate."""
    cfg = config_from_dict(read_config_file(path) if path is not None else {})
    for text in overrides:
        _update(cfg, parse_override(text))
    validate(cfg)
    return cfg


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Reject impossible values, whatever machine runs them (dcgan/train/plan.py checks the rest once the device and
    the number of processes are known)."""
    _need(cfg.data.image_size in IMAGE_SIZES,
          f"data.image_size={cfg.data.image_size} is not supported: use one of {', '.join(map(str, IMAGE_SIZES))}")
    for key in ("model.nz", "model.ngf", "model.ndf", "train.batch_size", "train.log_every",
                "train.checkpoint_every", "train.keep_last", "train.num_samples"):
        value = _get(cfg, key)
        _need(value >= 1, f"{key}={value} must be a positive integer")
    _need(cfg.train.epochs >= 1, f"train.epochs={cfg.train.epochs} must be at least 1")
    _need(cfg.train.max_steps >= 0, f"train.max_steps={cfg.train.max_steps} must be 0 (no limit) or positive")
    for key, allowed, hint in (("train.mixed_precision", PRECISIONS, ""), ("loss.name", LOSS_NAMES, ""),
                               ("optim.name", OPTIMIZERS, ""), ("model.d_conditioning", D_CONDITIONINGS, ""),
                               ("model.d_norm", D_NORMS, ""), ("optim.lr_decay", LR_DECAYS, ""),
                               ("train.compile_mode", COMPILE_MODES, " (CUDA graphs: train.cuda_graphs=true)")):
        _need(_get(cfg, key) in allowed, f"{key}='{_get(cfg, key)}' is not one of {', '.join(allowed)}{hint}")
    for key in ("optim.lr_g", "optim.lr_d"):
        _need(_get(cfg, key) > 0, f"{key}={_get(cfg, key)} must be positive")
    for key in ("model.g_extra_layers", "model.d_extra_layers", "optim.momentum", "loss.gp_weight", "loss.r1_gamma",
                "train.ema_start"):
        _need(_get(cfg, key) >= 0, f"{key}={_get(cfg, key)} must be 0 or positive")
    for key in ("optim.beta1", "optim.beta2", "optim.alpha", "train.ema_decay"):
        _need(0 <= _get(cfg, key) < 1, f"{key}={_get(cfg, key)} must be in [0, 1)")
    for key in ("loss.real_label", "loss.fake_label"):
        _need(0 <= _get(cfg, key) <= 1, f"{key}={_get(cfg, key)} must be in [0, 1]")
    for key in ("eval.every_epochs", "eval.patience", "eval.target"):
        _need(_get(cfg, key) >= 0, f"{key}={_get(cfg, key)} must be 0 (off) or positive")
    _need(not cfg.eval.target or cfg.eval.every_epochs > 0,
          f"eval.target={cfg.eval.target:g} needs evaluations: set eval.every_epochs (e.g. eval.every_epochs=1)")
    trackers = cfg.train.trackers.split(",")
    _need(set(trackers) <= set(TRACKERS) and "tensorboard" in trackers,
          f"train.trackers='{cfg.train.trackers}': use tensorboard or tensorboard,wandb (TensorBoard is always on)")
    try:
        metrics = registry.parse_metrics(cfg.eval.metrics, "eval.metrics")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    conditional = ",".join(registry.needing(metrics, registry.CONDITIONAL))
    _need(not conditional or cfg.model.conditional,
          f"eval.metrics={cfg.eval.metrics}: '{conditional}' measures a conditional model: set model.conditional=true "
          f"or leave it out")
    _need(cfg.optim.d_steps >= 1, f"optim.d_steps={cfg.optim.d_steps} must be a positive integer (D updates per G update)")
    _need(cfg.loss.r1_every >= 1, f"loss.r1_every={cfg.loss.r1_every} must be a positive integer")
    penalty = ("loss.name=wgan" if cfg.loss.name == "wgan" and cfg.loss.gp_weight
               else f"loss.r1_gamma={cfg.loss.r1_gamma:g}" if cfg.loss.r1_gamma else "")
    _need(not penalty or cfg.model.d_norm == "none",
          f"{penalty} penalizes each image's gradient, which D's BatchNorm mixes across the batch: "
          f"set model.d_norm=none")
    _need(cfg.eval.num_samples >= 2, f"eval.num_samples={cfg.eval.num_samples} must be at least 2")
    _need(cfg.eval.reference in ("test", "train"), f"eval.reference='{cfg.eval.reference}' is not one of test, train")


def _get(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)

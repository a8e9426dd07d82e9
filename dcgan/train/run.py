"""Training, start to end: the same code on 1 CPU, 1 GPU or N processes.

    1. settle the device and precision, start the processes, plan the run: every check that can reject the
       configuration, before a run dir exists (dcgan/train/plan.py)
    2. the run dir and the checkpoint to resume from, decided by the main process
    3. the Accelerator, the run's config.yaml and trackers, the data on the device
    4. the Trainer (dcgan/train/loop.py) runs the loop

The global batch (train.batch_size) is split evenly over the processes, so N processes train like one process
with the whole batch (BatchNorm synchronized).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from accelerate import Accelerator, PartialState
from accelerate.tracking import WandBTracker
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, set_seed

from dcgan.machinery import checkpoint as ckpt
from dcgan.machinery import rundir
from dcgan.config import Config
from dcgan.train.data import Digits, load_mnist_labels, load_mnist_uint8, to_training_images
from dcgan.train.plan import plan_run, resolve_precision, use_cpu
from dcgan.machinery.rundir import RunDirLock
from dcgan.train.loop import Evaluator, Trainer, TrainResult


def train(cfg: Config, evaluator: Evaluator | None = None) -> TrainResult:
    """Train a DCGAN as configured; every process returns its own models (for checks across processes).
    `evaluator` (evaluation.during_training.PeriodicEvaluator) measures the EMA generator every few epochs."""
    # 1. what runs where; cfg records the resolved precision, so the run's config.yaml tells the truth
    cpu = use_cpu(cfg)
    cfg.train.mixed_precision = resolve_precision(cfg, cpu)
    state = PartialState(cpu=cpu)  # starts the process group (gloo on CPU, NCCL on GPUs)
    with state.main_process_first():  # a download, if any, happens once
        digits = load_mnist_uint8(cfg.data.root, train=True, download=cfg.data.download)
        labels = load_mnist_labels(cfg.data.root, train=True)
    plan = plan_run(cfg, state.num_processes, state.process_index, len(digits), cuda=not cpu)

    # 2. where the run lives, and where it continues from
    home = resolve_run_dir(cfg, state)
    run_dir = home.run_dir

    # 3. the accelerator, the run's record, the data
    accelerator = make_accelerator(cfg, cpu, run_dir)
    if accelerator.is_main_process:
        ckpt.atomic_write(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    accelerator.init_trackers("tensorboard", config=cfg.flat())
    set_seed(cfg.train.seed)
    data = Digits(to_training_images(digits, cfg.data.image_size, accelerator.device), labels.to(accelerator.device))

    # 4. train
    trainer = Trainer(cfg, plan, accelerator, run_dir, data, evaluator, home.lock)
    for note in home.notes:
        trainer.log.info(note)
    if home.resume_from is not None:
        trainer.load_state_dict(home.resumed or ckpt.load_for_resume(home.resume_from, cfg.flat()), home.resume_from)
    return trainer.fit()


def make_accelerator(cfg: Config, cpu: bool, run_dir: Path) -> Accelerator:
    # torch 2.14 suggests forward_sync_buffers=False instead, which Accelerate's DDP kwargs do not expose yet;
    # broadcast_buffers=False is still honoured and is what we mean.
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
    return Accelerator(
        cpu=cpu,
        mixed_precision=cfg.train.mixed_precision,
        log_with=trackers(cfg, run_dir),
        project_dir=str(run_dir),
        # D runs twice (real, fake) before one backward: DDP's default buffer broadcast at each forward would
        # overwrite BN buffers in place between them. Synced BN keeps the buffers equal on every rank anyway.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )


@dataclass
class RunHome:
    """Where a run lives and where it continues from, as the main process decided (the others get the paths)."""
    run_dir: Path
    resume_from: Path | None = None
    resumed: dict | None = None          # the checkpoint's state, loaded (main process only)
    notes: list[str] = field(default_factory=list)  # for the run's log: checkpoints passed over
    lock: RunDirLock | None = None       # main process: held until the run ends


def trackers(cfg: Config, run_dir: Path) -> list:
    """TensorBoard (run_dir/tensorboard), and W&B when train.trackers names it: its project and group from the
    config, the run dir's name as the run's, its files (offline runs too) in run_dir/wandb."""
    chosen: list = ["tensorboard"]
    if "wandb" in cfg.train.trackers.split(","):
        chosen.append(WandBTracker(cfg.train.wandb_project, name=run_dir.name, dir=str(run_dir),
                                   group=cfg.train.wandb_group or None))
    return chosen


def resolve_run_dir(cfg: Config, state: PartialState) -> RunHome:
    """The main process picks (and creates) the run dir, locks it, and loads and checks the checkpoint to resume
    from; every process gets the same answer, or the same error. A checkpoint named by train.resume is checked
    before a run dir is created for it, so a bad one leaves nothing behind."""
    answer, home = [None, None, None], None
    if state.is_main_process:
        try:
            home = _main_process_home(cfg)
            answer = [str(home.run_dir), str(home.resume_from) if home.resume_from else None, None]
        except ckpt.CheckpointError as exc:
            answer = [None, None, str(exc)]
    if state.num_processes > 1:
        broadcast_object_list(answer, from_process=0)
    if answer[2]:
        raise ckpt.CheckpointError(answer[2])
    return home or RunHome(Path(answer[0]), Path(answer[1]) if answer[1] else None)


def _main_process_home(cfg: Config) -> RunHome:
    named = cfg.train.resume not in ("", "latest")
    loaded = None
    if named and Path(cfg.train.resume).is_file():
        loaded = ckpt.load_for_resume(Path(cfg.train.resume), cfg.flat())
    run_dir, resume_from = rundir.resolve(cfg.train.out_dir, cfg.train.run_dir, cfg.name, cfg.train.resume)
    lock = rundir.RunDirLock(run_dir)
    notes = []
    if resume_from is not None and loaded is None:
        resume_from, loaded, notes = rundir.newest_readable(ckpt.list_checkpoints(run_dir), cfg.flat())
    return RunHome(run_dir, resume_from, loaded, notes, lock)

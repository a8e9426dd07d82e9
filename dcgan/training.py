"""The training loop: one readable function, the same code on 1 CPU, 1 GPU or N processes.

Accelerate starts the processes' communication, wraps G and D in DistributedDataParallel and handles mixed
precision; everything else is plain PyTorch. The global batch (train.batch_size) is split evenly over the
processes, so N processes train like one process with the whole batch (BatchNorm synchronized).
"""
from __future__ import annotations

import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, set_seed

from . import checkpoint as ckpt
from . import rundir
from .config import Config, ConfigError, validate
from .cuda_graph import GraphedStep
from .data import epoch_indices, load_mnist_uint8, steps_per_epoch, to_training_images
from .ema import calibrate_batchnorm, make_ema, update_ema
from .losses import discriminator_loss, generator_loss
from .models import build_models
from .preemption import StopRequest
from .reporting import Health, RunLog, sample_grids
from .sync_batchnorm import convert_sync_batchnorm


def apply_launcher_settings(cfg: Config) -> None:
    """Honour `accelerate launch --mixed_precision X / --cpu` (they arrive as environment variables) when the
    config leaves the choice open, and record the effective values in cfg so config.yaml tells the truth."""
    launcher_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if cfg.train.mixed_precision == "no" and launcher_precision in ("fp16", "bf16"):
        cfg.train.mixed_precision = launcher_precision
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        cfg.train.cpu = True


def use_cpu(cfg: Config) -> bool:
    # Without CUDA, cpu=True makes a torchrun-started job use gloo and still run distributed.
    cpu = cfg.train.cpu or not torch.cuda.is_available()
    if cfg.train.mixed_precision == "fp16" and cpu:
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU: use bf16 or no on CPU")
    return cpu


def make_accelerator(cfg: Config, run_dir: Path) -> Accelerator:
    # torch 2.14 suggests forward_sync_buffers=False instead, which Accelerate's DDP kwargs do not expose yet;
    # broadcast_buffers=False is still honoured and is what we mean.
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
    return Accelerator(
        cpu=use_cpu(cfg),
        mixed_precision=cfg.train.mixed_precision,
        log_with="tensorboard",
        project_dir=str(run_dir),
        # D runs twice (real, fake) before one backward: DDP's default buffer broadcast at each forward would
        # overwrite BN buffers in place between them. Synced BN keeps the buffers equal on every rank anyway.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )


def resolve_run_dir(cfg: Config, state: PartialState) -> tuple[Path, Path | None]:
    """The main process picks (and creates) the run dir and checks the checkpoint to resume from; every process
    gets the same answer, or the same error. A checkpoint named by train.resume is checked before a run dir is
    created for it, so a bad one leaves nothing behind."""
    answer = [None, None, None]
    if state.is_main_process:
        try:
            named = cfg.train.resume not in ("", "latest")
            if named and Path(cfg.train.resume).is_file():
                ckpt.load_for_resume(Path(cfg.train.resume), cfg.flat())
            run_dir, resume_from = rundir.resolve(cfg.train.out_dir, cfg.train.run_dir, cfg.name, cfg.train.resume)
            if resume_from is not None and not named:
                ckpt.load_for_resume(resume_from, cfg.flat())
            answer = [str(run_dir), str(resume_from) if resume_from else None, None]
        except ckpt.CheckpointError as exc:
            answer = [None, None, str(exc)]
    if state.num_processes > 1:
        broadcast_object_list(answer, from_process=0)
    if answer[2]:
        raise ckpt.CheckpointError(answer[2])
    return Path(answer[0]), (Path(answer[1]) if answer[1] else None)


def rng_state(noise_generator: torch.Generator) -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state(), "noise": noise_generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_state(state: dict, noise_generator: torch.Generator) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    noise_generator.set_state(state["noise"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def uses_cuda_graphs(cfg: Config, accelerator: Accelerator) -> bool:
    # NCCL collectives (DDP, SyncBatchNorm) are not captured: several processes run the step eagerly.
    return cfg.train.cuda_graphs and accelerator.device.type == "cuda" and accelerator.num_processes == 1


def check_cuda_options(cfg: Config, graphs: bool) -> None:
    """Speed options that fail together on a GPU: one line before the first step, not a traceback in it."""
    if graphs and cfg.train.mixed_precision == "fp16" and not cfg.optim.fused:
        raise ConfigError("train.cuda_graphs with fp16 needs optim.fused=true (the unfused loss-scaler step reads "
                          "the GPU, which a graph cannot): set optim.fused=true or train.cuda_graphs=false")
    if cfg.train.compile and cfg.train.channels_last:
        # Inductor predicts contiguous ConvTranspose weight gradients where cuDNN returns channels_last ones and
        # fails its stride check in the first backward (pytorch/pytorch#171622; seen with torch 2.11 on an H100).
        raise ConfigError("train.compile with train.channels_last fails on CUDA (PyTorch issue 171622): "
                          "set train.channels_last=false to compile, or train.compile=false")


def build_training_objects(cfg: Config, accelerator: Accelerator):
    """G, D (prepared: on the device, DDP-wrapped when distributed), the EMA generator and both optimizers."""
    graphs = uses_cuda_graphs(cfg, accelerator)
    if accelerator.device.type == "cuda":
        check_cuda_options(cfg, graphs)
    G, D = build_models(cfg.data.image_size, cfg.model.nz, cfg.model.ngf, cfg.model.ndf)
    ema = make_ema(G).to(accelerator.device)  # plain BatchNorm: only ever used in eval mode
    if accelerator.num_processes > 1 and cfg.model.sync_bn:
        cuda = accelerator.device.type == "cuda"
        G, D = convert_sync_batchnorm(G, use_cuda_sync_bn=cuda), convert_sync_batchnorm(D, use_cuda_sync_bn=cuda)
    if cfg.train.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms once
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    # capturable: Adam's step counters and bias corrections stay on the GPU, as a captured step needs.
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optim.lr_g, betas=betas, fused=cfg.optim.fused or None,
                             capturable=graphs)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.lr_d, betas=betas, fused=cfg.optim.fused or None,
                             capturable=graphs)
    if cfg.train.compile:
        G.compile(mode=cfg.train.compile_mode)  # in place: state_dict keys stay those of the plain modules
        D.compile(mode=cfg.train.compile_mode)
    G, D, opt_g, opt_d = accelerator.prepare(G, D, opt_g, opt_d)
    return G, D, ema, opt_g, opt_d


def train_step(accelerator: Accelerator, G, D, D_raw, opt_g, opt_d, real: torch.Tensor, z: torch.Tensor,
               real_label: float, fake_label: float, joint_batch: bool = False) -> torch.Tensor:
    """One D update and one G update; returns [loss_D, loss_G, D(x), D(G(z))] as a device tensor (no host sync).
    joint_batch: D's BatchNorm sees real and fake images together (loss.joint_batch), in both updates."""
    n = real.shape[0]
    # (1) D: maximize log D(x) + log(1 - D(G(z))) on real images and detached fakes.
    with accelerator.autocast():
        fake = G(z)
        if joint_batch:
            real_logits, fake_logits = D(torch.cat([real, fake.detach()])).split(n)
        else:
            real_logits, fake_logits = D(real), D(fake.detach())
        loss_d = discriminator_loss(real_logits, fake_logits, real_label, fake_label)
    opt_d.zero_grad(set_to_none=True)
    accelerator.backward(loss_d)
    opt_d.step()

    # (2) G: maximize log D(G(z)). D is called unwrapped and frozen: no gradients for D's parameters and
    # no DDP all-reduce of gradients nobody uses; G's DDP wrapper still averages G's gradients.
    D_raw.requires_grad_(False)
    with accelerator.autocast():
        loss_g = generator_loss(D_raw(torch.cat([real, fake]))[n:] if joint_batch else D_raw(fake))
    opt_g.zero_grad(set_to_none=True)
    accelerator.backward(loss_g)
    opt_g.step()
    D_raw.requires_grad_(True)

    d_x, d_g_z = torch.sigmoid(real_logits.detach().float()).mean(), torch.sigmoid(fake_logits.detach().float()).mean()
    return torch.stack([loss_d.detach(), loss_g.detach(), d_x, d_g_z])


def make_train_step(cfg: Config, accelerator: Accelerator, G, D, opt_g, opt_d):
    """step(real, z) -> stats: train_step with everything else bound, captured as a CUDA graph where it applies."""
    D_raw = accelerator.unwrap_model(D)
    real_label = cfg.loss.real_label if cfg.loss.label_smoothing else 1.0
    fake_label = cfg.loss.fake_label if cfg.loss.label_smoothing else 0.0

    def step(real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return train_step(accelerator, G, D, D_raw, opt_g, opt_d, real, z, real_label, fake_label,
                          cfg.loss.joint_batch)

    return GraphedStep(step) if uses_cuda_graphs(cfg, accelerator) else step


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    generator: torch.nn.Module       # unwrapped, on the training device
    discriminator: torch.nn.Module
    ema: torch.nn.Module
    train_seconds: float             # wall time spent training, start-up and evaluations excluded, across resumes
    stopped_by: str = ""             # "SIGTERM"/"SIGUSR1" when a signal stopped the run early (checkpoint written)


def train(cfg: Config) -> TrainResult:
    """Train a DCGAN as configured; every process returns its own models (for checks across processes)."""
    apply_launcher_settings(cfg)
    state = PartialState(cpu=use_cpu(cfg))  # starts the process group (gloo on CPU, NCCL on GPUs)
    world = state.num_processes
    validate(cfg, world_size=world)
    # Everything that can reject this configuration runs before the run dir exists: a mistake leaves no empty one.
    with state.main_process_first():  # a download, if any, happens once
        digits = load_mnist_uint8(cfg.data.root, train=True, download=cfg.data.download)
    global_batch, local_batch = cfg.train.batch_size, cfg.train.batch_size // world
    per_epoch = steps_per_epoch(len(digits), global_batch)
    if per_epoch == 0:
        raise ConfigError(f"train.batch_size={global_batch} is larger than the {len(digits)} training images")
    evaluator = None
    if cfg.eval.every_epochs:
        from evaluation.during_training import PeriodicEvaluator  # measurement stays a separate package
        evaluator = PeriodicEvaluator(cfg.eval, cfg.data.root, cfg.data.image_size, cfg.model.nz, state.device)
    run_dir, resume_from = resolve_run_dir(cfg, state)
    accelerator = make_accelerator(cfg, run_dir)
    rank, device = accelerator.process_index, accelerator.device
    log = RunLog(accelerator, run_dir)
    if accelerator.is_main_process:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    accelerator.init_trackers("tensorboard", config=cfg.flat())
    set_seed(cfg.train.seed)

    # ---- data: the whole training set on the device, resized once -----------------------------------
    images = to_training_images(digits, cfg.data.image_size, device)
    total_steps = cfg.train.epochs * per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)

    # ---- models and optimizers ------------------------------------------------------------------------
    G, D, ema, opt_g, opt_d = build_training_objects(cfg, accelerator)
    G_raw, D_raw = accelerator.unwrap_model(G), accelerator.unwrap_model(D)

    # Every process draws the noise of the whole global batch and keeps its slice: the run then does not
    # depend on the number of processes, and one generator state makes resume exact.
    noise_generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
    fixed_noise = torch.randn(cfg.train.num_samples, cfg.model.nz,
                              generator=torch.Generator().manual_seed(cfg.train.seed + 1)).to(device)
    # Fixed too, and drawn from its own generator: calibrating the EMA's BatchNorm never moves the training's RNG.
    calibration_noise = torch.randn(8 * local_batch, cfg.model.nz,
                                    generator=torch.Generator().manual_seed(cfg.train.seed + 2)).to(device)

    step, seconds_before_resume = 0, 0.0
    if resume_from is not None:
        saved = ckpt.load_for_resume(resume_from, cfg.flat())
        ckpt.load_state(G_raw, saved["generator"], "generator", resume_from)
        ckpt.load_state(D_raw, saved["discriminator"], "discriminator", resume_from)
        ckpt.load_state(ema, saved["ema"], "EMA generator", resume_from)
        ckpt.load_optimizer_state(opt_g, saved["opt_g"])
        ckpt.load_optimizer_state(opt_d, saved["opt_d"])
        if accelerator.scaler is not None and saved.get("scaler"):
            accelerator.scaler.load_state_dict(saved["scaler"])
        restore_rng_state(saved["rng"], noise_generator)
        if evaluator and saved.get("eval"):
            evaluator.load_state_dict(saved["eval"])
        step, seconds_before_resume = saved["step"], saved.get("train_seconds", 0.0)
        log.info(f"resumed from {resume_from} at step {step}")

    calibrated_at = -1

    def calibrated_ema() -> torch.nn.Module:
        """The EMA generator with BatchNorm statistics of its own weights (dcgan/ema.py), for samples, evaluations
        and saving; recomputed at most once per step."""
        nonlocal calibrated_at
        if calibrated_at != step:
            calibrate_batchnorm(ema, calibration_noise, local_batch)
            calibrated_at = step
        return ema

    def training_state(step: int, train_seconds: float) -> dict:
        return {"generator": G_raw.state_dict(), "discriminator": D_raw.state_dict(),
                "ema": calibrated_ema().state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "step": step, "epoch": step // per_epoch, "rng": rng_state(noise_generator), "config": cfg.to_dict(),
                "eval": evaluator.state_dict() if evaluator else None, "train_seconds": train_seconds}

    def save(step: int) -> None:
        if accelerator.is_main_process:
            path = ckpt.save_checkpoint(training_state(step, training_seconds()), run_dir, step, cfg.train.keep_last)
            log.info(f"checkpoint {path}")

    def training_seconds() -> float:
        """For time-to-quality: wall time since the loop began (plus before a resume), evaluations excluded."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # queued GPU work is training time not yet done
        return seconds_before_resume + time.perf_counter() - loop_start - eval_seconds

    def run_evaluation(step: int) -> str:
        """Main process: metrics of the EMA generator, best.pt; every process: why to stop early ('' = go on)."""
        decision = [""]
        if accelerator.is_main_process:
            seconds = training_seconds()
            values = evaluator.evaluate(calibrated_ema())
            log.scalars({**{f"eval/{name}": value for name, value in values.items()}, "time/train_seconds": seconds},
                        step=step)
            improved = evaluator.record(values)
            if improved:
                ckpt.atomic_save(training_state(step, seconds), run_dir / "best.pt")
            shown = " ".join(f"{name} {value:.4g}" for name, value in values.items())
            log.info(f"eval step {step} after {seconds:.1f} s of training: {shown}; best {cfg.eval.best_metric} "
                     f"{evaluator.best:.4g}{' (new best: best.pt)' if improved else f' ({evaluator.evaluations_since_best} without improvement)'}")
            metric = cfg.eval.best_metric
            if evaluator.reached_target(values):
                decision = [f"{metric} {values[metric]:.4g} reached eval.target={cfg.eval.target:g} "
                            f"after {seconds:.1f} s of training"]
            elif evaluator.should_stop():
                decision = [f"{metric} has not improved in {cfg.eval.patience} evaluations"]
        if world > 1:
            broadcast_object_list(decision, from_process=0)
        return decision[0]

    def report_epoch(epoch: int, sums: torch.Tensor, count: int) -> None:
        loss_d, _, d_x, d_g_z = (accelerator.reduce(sums, "mean") / max(count, 1)).tolist()
        health = Health(d_x=d_x, d_g_z=d_g_z, loss_d=loss_d)
        log.scalars({"health/ok": float(not health.problems()), "health/D_x": d_x, "health/D_G_z": d_g_z,
                     "health/loss_D": loss_d, "epoch": epoch + 1}, step=step)
        log.info(f"epoch {epoch + 1}/{cfg.train.epochs} step {step}: {health.verdict()}")
        log.image_grids(sample_grids(G_raw, calibrated_ema(), fixed_noise, images[: cfg.train.num_samples]), step=step)

    log.info(f"run dir {run_dir}: {world} process(es) on {device.type}, global batch {global_batch} "
             f"({local_batch} per process), {per_epoch} steps/epoch, {total_steps} steps, "
             f"precision {cfg.train.mixed_precision}, synced BN {world > 1 and cfg.model.sync_bn}, "
             f"CUDA graphs {uses_cuda_graphs(cfg, accelerator)}")
    train_step_fn = make_train_step(cfg, accelerator, G, D, opt_g, opt_d)
    stop = StopRequest(distributed=world > 1)
    log.progress(total=total_steps, initial=step)
    # Running sums stay on the device; they reach the host only every log_every steps.
    sums = torch.zeros(4, device=device)        # loss_D, loss_G, D(x), D(G(z)) since the last log
    epoch_sums = torch.zeros(4, device=device)  # the same since the epoch (or the resume) began
    epoch_count, skipped_d, skipped_g = 0, 0, 0
    last_log_step, last_log_time = step, time.perf_counter()
    early_stop = ""
    loop_start, eval_seconds = time.perf_counter(), 0.0

    while step < total_steps:
        epoch = step // per_epoch
        batches = epoch_indices(len(images), global_batch, rank, world, cfg.train.seed, epoch).to(device)
        for i in range(step % per_epoch, per_epoch):
            real = images[batches[i]]
            z = torch.randn(global_batch, cfg.model.nz, generator=noise_generator, device=device)
            z = z[rank * local_batch:(rank + 1) * local_batch]

            stats = train_step_fn(real, z)
            update_ema(ema, G_raw, cfg.train.ema_decay, step)
            step += 1

            sums += stats
            epoch_sums += stats
            epoch_count += 1
            if accelerator.scaler is not None:  # the scaler's step already synced with the host
                skipped_d += opt_d.step_was_skipped
                skipped_g += opt_g.step_was_skipped
            log.advance()

            if step % cfg.train.log_every == 0 or step == total_steps:
                n = step - last_log_step
                loss_d_v, loss_g_v, d_x, d_g_z = (accelerator.reduce(sums, "mean") / n).tolist()
                now = time.perf_counter()
                values = {"loss/D": loss_d_v, "loss/G": loss_g_v, "D(x)": d_x, "D(G(z))": d_g_z,
                          "perf/img_per_s": n * global_batch / (now - last_log_time), "epoch": epoch + 1}
                if accelerator.scaler is not None:
                    values.update({"amp/loss_scale": accelerator.scaler.get_scale(),
                                   "amp/skipped_steps_D": skipped_d, "amp/skipped_steps_G": skipped_g})
                log.scalars(values, step=step)
                log.info(f"step {step}/{total_steps} loss_D {loss_d_v:.3f} loss_G {loss_g_v:.3f} "
                         f"D(x) {d_x:.3f} D(G(z)) {d_g_z:.3f} {values['perf/img_per_s']:.0f} img/s")
                sums.zero_()
                last_log_step, last_log_time = step, time.perf_counter()

            end_of_epoch = step % per_epoch == 0
            early_stop = ""
            if end_of_epoch or step == total_steps:
                report_epoch(epoch, epoch_sums, epoch_count)
                epoch_sums.zero_()
                epoch_count = 0
                if evaluator and end_of_epoch and evaluator.due(epoch):
                    eval_start = time.perf_counter()
                    early_stop = run_evaluation(step)
                    eval_seconds += time.perf_counter() - eval_start
            stopping = stop.agreed()
            if step % cfg.train.checkpoint_every == 0 or end_of_epoch or step == total_steps or stopping:
                save(step)
            if early_stop:
                log.info(f"early stopping at step {step}: {early_stop}; the best model is {run_dir / 'best.pt'}")
                break
            if stopping:
                signal_name = stop.signal_name or "SIGTERM"  # another process got it; we stop with it
                log.info(f"stopping at step {step} on {signal_name}: checkpoint written; "
                         f"train.resume=latest continues from it")
                return _finish(accelerator, log, stop,
                               TrainResult(run_dir, step, G_raw, D_raw, calibrated_ema(), training_seconds(),
                                           signal_name))
            if step >= total_steps:
                break
        if early_stop:
            break

    seconds = training_seconds()
    if accelerator.is_main_process:
        ckpt.atomic_save(calibrated_ema().state_dict(), run_dir / "generator.pt")
        ckpt.atomic_save(D_raw.state_dict(), run_dir / "discriminator.pt")
        log.info(f"done: {step} steps, {seconds:.1f} s of training; generator (EMA) and discriminator in {run_dir}")
    return _finish(accelerator, log, stop, TrainResult(run_dir, step, G_raw, D_raw, calibrated_ema(), seconds))


def _finish(accelerator: Accelerator, log: RunLog, stop: StopRequest, result: TrainResult) -> TrainResult:
    accelerator.wait_for_everyone()
    log.close()  # first: its pending sample grids go to the TensorBoard writer that end_training closes
    accelerator.end_training()
    stop.restore()
    return result


"""The Trainer: the training loop and everything it keeps between steps, held as attributes.

One object per concern, each with its own state_dict (Accelerate's checkpointing guide): the GAN step (G, D,
optimizers, loss), the EMA generator, the latent noise, the training clock, the evaluator. The loop in `fit`
reads top to bottom; what happens at a log interval, an epoch end, an evaluation and a checkpoint are methods.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from dcgan.machinery import checkpoint as ckpt
from dcgan.machinery.clock import TrainingClock
from dcgan.config import Config
from dcgan.train.data import Digits, ShardedBatches
from dcgan.train.ema import EmaGenerator
from dcgan.models import models_for
from dcgan.train.latent import LatentNoise, fixed_noise
from dcgan.train.plan import RunPlan, planned_steps
from dcgan.machinery.preemption import StopRequest
from dcgan.machinery.health import Health, sample_spread, spread
from dcgan.machinery.memory import peak_memory
from dcgan.machinery.run_log import RunLog, grid_labels, sample_grids
from dcgan.machinery.rng_state import global_rng_state, load_global_rng_state
from dcgan.machinery.rundir import RunDirLock
from dcgan.train.step import StepStats, build_gan_step, graphed


class Evaluator(Protocol):
    """What the trainer needs of an evaluator (evaluation.during_training.PeriodicEvaluator is one); it is
    handed in from outside, so this package never imports the evaluation package."""

    def due(self, epoch: int) -> bool: ...
    def evaluate(self, generator: torch.nn.Module, train_seconds: float): ...  # -> .values .improved .summary .stop
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    generator: torch.nn.Module       # unwrapped, on the training device
    discriminator: torch.nn.Module
    ema: torch.nn.Module
    train_seconds: float             # wall time spent training, start-up and evaluations excluded, across resumes
    stopped_by: str = ""             # "SIGTERM"/"SIGUSR1" when a signal stopped the run early (checkpoint written)


class Trainer:
    def __init__(self, cfg: Config, plan: RunPlan, accelerator: Accelerator, run_dir: Path, data: Digits,
                 evaluator: Evaluator | None = None, lock: RunDirLock | None = None):
        self.cfg, self.plan, self.accelerator, self.run_dir = cfg, plan, accelerator, Path(run_dir)
        self.evaluator, self.lock = evaluator, lock  # lock: the run dir's, released when the run ends
        device, seed, nz = accelerator.device, cfg.train.seed, cfg.model.nz
        G, D = models_for(cfg)
        # The EMA copies the plain G: plain BatchNorm (it only runs in eval mode), no compile, default layout.
        # Its BatchNorm calibration and the sample grids use fixed noises, each from its own seed.
        self.ema = EmaGenerator(G, cfg.train.ema_decay, fixed_noise(8 * plan.local_batch, nz, seed + 2, device),
                                plan.local_batch, start=cfg.train.ema_start)
        self.ema.module.to(device)
        # A conditional model's grid has one row per digit: num_samples rounded up to 10 rows.
        self.sample_labels, self.grid_row = grid_labels(cfg.train.num_samples, cfg.model.conditional, device)
        self.sample_noise = fixed_noise(len(self.sample_labels), nz, seed + 1, device)
        self.gan = build_gan_step(cfg, accelerator, G, D, plan.cuda_graphs, plan.total_steps)
        self.step_fn = graphed(self.gan, plan.cuda_graphs)
        self.G, self.D = accelerator.unwrap_model(self.gan.G), self.gan.D_raw
        self.noise = LatentNoise(nz, cfg.train.batch_size, plan.rank, plan.local_batch, seed, device)
        self.batches = ShardedBatches(data, cfg.train.batch_size, plan.rank, plan.world_size, seed)
        self.real_samples = data.images[: cfg.train.num_samples]
        self.real_spread = spread(self.real_samples)  # what the fixed-noise samples' spread is judged against
        self.clock = TrainingClock(device)
        self.log = RunLog(accelerator, run_dir)
        self.step = 0
        # Running sums stay on the device; they reach the host only every log_every steps and at epoch ends.
        self.window, self.window_start = StepStats.zeros(device), (0, 0.0)
        self.epoch_stats, self.epoch_steps = StepStats.zeros(device), 0
        self.skipped_d = self.skipped_g = 0  # fp16 steps the loss scaler skipped (inf/NaN gradients)

    # ---- state: one state_dict per stateful object --------------------------------------------------------
    def state_dict(self) -> dict:
        scaler = self.accelerator.scaler
        return {"generator": self.G.state_dict(), "discriminator": self.D.state_dict(),
                "ema": self.ema.calibrated(self.step).state_dict(),
                "opt_g": self.gan.opt_g.state_dict(), "opt_d": self.gan.opt_d.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "step": self.step, "epoch": self.step // self.plan.steps_per_epoch,
                "rng": {**global_rng_state(), "noise": self.noise.state_dict()}, "config": self.cfg.to_dict(),
                "eval": self.evaluator.state_dict() if self.evaluator else None,
                "train_seconds": self.clock.state_dict()}

    def load_state_dict(self, state: dict, path: Path) -> None:
        """Continue from a checkpoint (dcgan.machinery.checkpoint.load_for_resume); a mismatch is a one-line CheckpointError."""
        ckpt.load_state(self.G, state["generator"], "generator", path)
        ckpt.load_state(self.D, state["discriminator"], "discriminator", path)
        ckpt.load_state(self.ema, state["ema"], "EMA generator", path)
        ckpt.load_optimizer_state(self.gan.opt_g, state["opt_g"])
        ckpt.load_optimizer_state(self.gan.opt_d, state["opt_d"])
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        load_global_rng_state(state["rng"])
        self.noise.load_state_dict(state["rng"]["noise"])
        if self.evaluator and state.get("eval"):
            self.evaluator.load_state_dict(state["eval"])
        self.clock.load_state_dict(state.get("train_seconds", 0.0))
        self.step = self.gan.steps = state["step"]
        self.log.info(f"resumed from {path} at step {self.step}")
        self.note_replanned_decay(state["config"])

    def note_replanned_decay(self, saved_config: dict) -> None:
        """optim.lr_decay follows step / the run's total steps, so a resume with another length re-plans it: an
        18-epoch run resumed with train.epochs=36 goes on at half its rate, not near 0. Worth a line in the log."""
        decay, saved = self.gan.schedule.lr_decay, saved_config.get("train", {})
        planned = planned_steps(saved.get("epochs", 0), saved.get("max_steps", 0), self.plan.steps_per_epoch)
        if decay and planned and planned != self.plan.total_steps:
            self.log.info(f"optim.lr_decay=linear now spans {self.plan.total_steps} steps, not the {planned} this run "
                          f"was started with: the learning rates go on at {decay.scale(self.step):.2f} of their "
                          f"configured values instead of {decay.scale(self.step, planned):.2f} (to compare run "
                          f"lengths, train each from the start)")

    # ---- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, plan = self.cfg, self.plan
        self.log.info(f"run dir {self.run_dir}: {plan.world_size} process(es) on {self.accelerator.device.type}, "
                      f"global batch {cfg.train.batch_size} ({plan.local_batch} per process), "
                      f"{plan.steps_per_epoch} steps/epoch, {plan.total_steps} steps, "
                      f"precision {cfg.train.mixed_precision}, synced BN {plan.world_size > 1 and cfg.model.sync_bn}, "
                      f"CUDA graphs {plan.cuda_graphs}")
        stop = StopRequest(distributed=plan.world_size > 1)
        self.log.progress(total=plan.total_steps, initial=self.step)
        self.clock.start()
        self.window_start = (self.step, self.clock.seconds())
        early_stop, stopping = "", False
        while self.step < plan.total_steps and not early_stop and not stopping:
            real, labels = self.batches.batch(self.step)
            stats = self.step_fn(real, labels, self.noise.next())
            self.ema.update(self.G, self.step)
            self.step += 1
            self.count(stats)
            if self.step % cfg.train.log_every == 0 or self.step == plan.total_steps:
                self.log_window()
            end_of_epoch = self.step % plan.steps_per_epoch == 0
            if end_of_epoch or self.step == plan.total_steps:
                early_stop = self.end_epoch(evaluate=end_of_epoch)
            stopping = stop.agreed()
            if self.step % cfg.train.checkpoint_every == 0 or end_of_epoch or self.step == plan.total_steps or stopping:
                self.save_checkpoint()
        stopped_by = (stop.signal_name or "SIGTERM") if stopping else ""  # another process got it: we stop with it
        self.finish(early_stop, stopped_by)
        stop.restore()
        return TrainResult(self.run_dir, self.step, self.G, self.D, self.ema.calibrated(self.step),
                           self.clock.seconds(), stopped_by)

    # ---- what the loop does besides steps ----------------------------------------------------------------------
    def count(self, stats: StepStats) -> None:
        self.window.add_(stats)
        self.epoch_stats.add_(stats)
        self.epoch_steps += 1
        if self.accelerator.scaler is not None:  # the scaler's step already synced with the host
            self.skipped_d += self.gan.opt_d.step_was_skipped
            self.skipped_g += self.gan.opt_g.step_was_skipped
        self.log.advance()

    def log_window(self) -> None:
        """Mean losses and D outputs since the last log (over all processes), and throughput."""
        first_step, since = self.window_start
        steps = self.step - first_step
        means = self.window.mean(self.accelerator, steps)
        rate = steps * self.cfg.train.batch_size / max(self.clock.seconds() - since, 1e-9)
        values = {"loss/D": means["loss_D"], "loss/G": means["loss_G"], "D(x)": means["D_x"],
                  "D(G(z))": means["D_G_z"], "perf/img_per_s": rate,
                  "perf/peak_memory_mib": peak_memory(self.accelerator.device)[1],
                  "time/train_seconds": self.clock.seconds(), "epoch": self.step // self.plan.steps_per_epoch + 1}
        scaler = self.accelerator.scaler
        if scaler is not None:
            values.update({"amp/loss_scale": scaler.get_scale(), "amp/skipped_steps_D": self.skipped_d,
                           "amp/skipped_steps_G": self.skipped_g})
        self.log.scalars(values, step=self.step)
        self.log.info(f"step {self.step}/{self.plan.total_steps} loss_D {means['loss_D']:.3f} "
                      f"loss_G {means['loss_G']:.3f} D(x) {means['D_x']:.3f} D(G(z)) {means['D_G_z']:.3f} "
                      f"{rate:.0f} img/s")
        self.window.zero_()
        self.window_start = (self.step, self.clock.seconds())

    def end_epoch(self, evaluate: bool) -> str:
        """Sample grids, an evaluation when due, and the health verdict of the epoch that ended. Returns why
        training should stop early ('' = go on)."""
        epoch = (self.step - 1) // self.plan.steps_per_epoch
        self.log.image_grids(sample_grids(self.G, self.ema.calibrated(self.step), self.sample_noise, self.sample_labels,
                                          self.real_samples, self.grid_row), step=self.step)
        stop, values = "", {}
        if evaluate and self.evaluator and self.evaluator.due(epoch):
            with self.clock.paused():
                stop, values = self.evaluate()
        means = self.epoch_stats.mean(self.accelerator, self.epoch_steps)
        loss = self.gan.objective.loss
        health = Health(means["D_x"], means["D_G_z"], means["loss_D"], loss.real_target, loss.fake_target,
                        sample_spread(self.G, self.sample_noise) / self.real_spread, values.get("classes_covered"))
        self.log.scalars({**health.scalars(), "epoch": epoch + 1}, step=self.step)
        self.log.info(f"epoch {epoch + 1}/{self.cfg.train.epochs} step {self.step}: {health.verdict()}")
        self.log.epoch({"epoch": epoch + 1, "step": self.step, "train_seconds": self.clock.seconds(),
                        "health": health.verdict(), "diverged": health.divergence(), "eval": values})
        self.epoch_stats.zero_()
        self.epoch_steps = 0
        return stop

    def evaluate(self) -> tuple[str, dict[str, float]]:
        """Main process: metrics of the EMA generator, best.pt. Returns why to stop early ('' = go on; on every
        process) and the metrics (on the main process; empty elsewhere)."""
        decision, values = [""], {}
        if self.accelerator.is_main_process:
            seconds = self.clock.seconds()
            result = self.evaluator.evaluate(self.ema.calibrated(self.step), seconds)
            values = result.values
            self.log.scalars({**{f"eval/{name}": value for name, value in values.items()},
                              "time/train_seconds": seconds}, step=self.step)
            if result.improved:
                ckpt.atomic_save(self.state_dict(), self.run_dir / "best.pt")
            self.log.info(f"eval step {self.step} after {seconds:.1f} s of training: {result.summary}"
                          f"{'; saved best.pt' if result.improved else ''}")
            decision = [result.stop]
        if self.plan.world_size > 1:
            broadcast_object_list(decision, from_process=0)
        return decision[0], values

    def save_checkpoint(self) -> None:
        if self.accelerator.is_main_process:
            path = ckpt.save_checkpoint(self.state_dict(), self.run_dir, self.step, self.cfg.train.keep_last)
            self.log.info(f"checkpoint {path}")

    def finish(self, early_stop: str, stopped_by: str) -> None:
        """The last words of a run: why it ended and, unless a signal stopped it, the exported models."""
        if stopped_by:
            self.log.info(f"stopping at step {self.step} on {stopped_by}: checkpoint written; "
                          f"train.resume=latest continues from it")
        else:
            if early_stop:
                self.log.info(f"early stopping at step {self.step}: {early_stop}; "
                              f"the best model is {self.run_dir / 'best.pt'}")
            if self.accelerator.is_main_process:
                ckpt.export_weights(self.ema.calibrated(self.step).state_dict(), self.run_dir / "generator.pt")
                ckpt.export_weights(self.D.state_dict(), self.run_dir / "discriminator.pt")
            self.log.info(f"done: {self.step} steps, {self.clock.seconds():.1f} s of training; generator (EMA) and "
                          f"discriminator in {self.run_dir} (.pt and .safetensors)")
        self.accelerator.wait_for_everyone()
        self.log.close()  # first: its pending sample grids go to the TensorBoard writer that end_training closes
        self.accelerator.end_training()
        if self.lock is not None:
            self.lock.release()

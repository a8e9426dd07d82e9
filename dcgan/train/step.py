"""The GAN training step as an object: networks, optimizers and loss bound once, then `step(real, labels, z)` per
batch.

Accelerate wraps G and D in DistributedDataParallel when several processes train, and handles mixed precision;
the step itself is plain PyTorch: one D update, then one G update. On one GPU the whole step is captured once as
a CUDA graph and replayed (dcgan/machinery/cuda_graph.py), which is why it returns its statistics as one device tensor and
never reads the GPU from the host.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import nn

from dcgan.config import Config, OptimConfig
from dcgan.machinery.cuda_graph import GraphedStep
from dcgan.train.losses import R1, GradientPenalty, Hinge, NonSaturatingBCE, Wasserstein, build_loss, build_penalties
from dcgan.machinery.sync_batchnorm import convert_sync_batchnorm


@dataclass
class StepStats:
    """loss_D, loss_G, D(x), D(G(z)) of one step, or summed over steps, as one device tensor (no host sync)."""
    values: torch.Tensor
    NAMES = ("loss_D", "loss_G", "D_x", "D_G_z")

    @classmethod
    def zeros(cls, device: torch.device) -> StepStats:
        return cls(torch.zeros(len(cls.NAMES), device=device))

    def add_(self, other: StepStats) -> None:
        self.values += other.values

    def zero_(self) -> None:
        self.values.zero_()

    def mean(self, accelerator: Accelerator, count: int) -> dict[str, float]:
        """The mean over `count` steps and over every process, by name (reads the device: at log intervals)."""
        means = (accelerator.reduce(self.values, "mean") / max(count, 1)).tolist()
        return dict(zip(self.NAMES, means))


@dataclass
class Objective:
    """What D and G are trained on: the loss on D's logits and the gradient penalties on D (dcgan/train/losses.py), and
    whether D's BatchNorm sees reals and fakes as one batch (loss.joint_batch)."""
    loss: NonSaturatingBCE | Hinge | Wasserstein
    penalties: list[GradientPenalty | R1] = field(default_factory=list)
    joint_batch: bool = False


class Schedule:
    """What changes with the step count, as a function of it alone (nothing to save, exact on resume): the
    learning rates (optim.lr_decay) and which steps update G (optim.d_steps)."""

    def __init__(self, lr_decay: LinearDecay | None = None, d_steps: int = 1):
        self.lr_decay, self.d_steps = lr_decay, d_steps

    def set_learning_rates(self, step: int) -> None:
        if self.lr_decay:
            self.lr_decay(step)

    def updates_g(self, step: int) -> bool:
        return (step + 1) % self.d_steps == 0


class GANStep:
    """`step(real, labels, z) -> StepStats`: one D update on real images and detached fakes, then one G update
    (with optim.d_steps = k: on every k-th step only, so D learns from k batches per G update).
    The fakes are drawn for the real batch's labels, which only conditional models use (dcgan/models.py).
    `steps` counts the steps taken (the trainer sets it on resume): lazy penalties and the schedule follow it."""

    def __init__(self, accelerator: Accelerator, G, D, opt_g, opt_d, objective: Objective,
                 schedule: Schedule | None = None):
        self.accelerator, self.G, self.D, self.opt_g, self.opt_d = accelerator, G, D, opt_g, opt_d
        self.D_raw = accelerator.unwrap_model(D)
        self.objective = objective
        self.schedule = schedule or Schedule()
        self.steps = 0
        # The last G update's loss: what a step without one reports (a device tensor, never read here)
        self.loss_g = torch.zeros((), device=accelerator.device)

    def __call__(self, real: torch.Tensor, labels: torch.Tensor, z: torch.Tensor) -> StepStats:
        self.schedule.set_learning_rates(self.steps)
        fake, real_logits, fake_logits, loss_d = self.discriminator_phase(real, labels, z)
        if self.schedule.updates_g(self.steps):
            self.loss_g = self.generator_phase(real, labels, fake).detach()
        d_x = torch.sigmoid(real_logits.detach().float()).mean()
        d_g_z = torch.sigmoid(fake_logits.detach().float()).mean()
        self.steps += 1
        return StepStats(torch.stack([loss_d.detach(), self.loss_g, d_x, d_g_z]))

    def discriminator_phase(self, real: torch.Tensor, labels: torch.Tensor, z: torch.Tensor):
        """D learns to tell real images from detached fakes."""
        with self.accelerator.autocast():
            fake = self.G(z, labels)
            if self.objective.joint_batch:
                both = torch.cat([labels, labels])
                real_logits, fake_logits = self.D(torch.cat([real, fake.detach()]), both).split(len(real))
            else:
                real_logits, fake_logits = self.D(real, labels), self.D(fake.detach(), labels)
            loss_d = self.objective.loss.discriminator(real_logits, fake_logits) + self.penalty(real, fake, labels)
        self.opt_d.zero_grad(set_to_none=True)
        self.accelerator.backward(loss_d)
        self.opt_d.step()
        return fake, real_logits, fake_logits, loss_d

    def penalty(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The gradient penalties due this step (dcgan/train/losses.py), on the unwrapped D: DDP cannot differentiate
        twice, and D's parameters are the same tensors, so DDP still averages their whole gradient."""
        total = torch.zeros((), device=real.device)
        for penalty in self.objective.penalties:
            if penalty.due(self.steps):
                total = total + penalty(self.D_raw, real, fake, labels)
        return total

    def generator_phase(self, real: torch.Tensor, labels: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """G learns to make D call its fakes real. D is called unwrapped and frozen: no gradients for D's
        parameters and no DDP all-reduce of gradients nobody uses; G's DDP wrapper still averages G's gradients."""
        self.D_raw.requires_grad_(False)
        with self.accelerator.autocast():
            if self.objective.joint_batch:
                logits = self.D_raw(torch.cat([real, fake]), torch.cat([labels, labels]))[len(real):]
            else:
                logits = self.D_raw(fake, labels)
            loss_g = self.objective.loss.generator(logits)
        self.opt_g.zero_grad(set_to_none=True)
        self.accelerator.backward(loss_g)
        self.opt_g.step()
        self.D_raw.requires_grad_(True)
        return loss_g


class LinearDecay:
    """optim.lr_decay=linear: every optimizer's learning rate falls linearly from its configured value to 0 over
    the run's steps. A function of the step alone: nothing to save, exact on resume."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], total_steps: int):
        # The groups are looked up at every step: a resume's load_state_dict replaces an optimizer's group dicts.
        self.optimizers = optimizers
        self.configured = [[group["lr"] for group in opt.param_groups] for opt in optimizers]
        self.total_steps = total_steps

    def scale(self, step: int, total_steps: int | None = None) -> float:
        """The fraction of the configured rates at `step` of a run of total_steps (default: this run's)."""
        return max(0.0, 1.0 - step / (total_steps or self.total_steps))

    def __call__(self, step: int) -> None:
        scale = self.scale(step)
        for opt, rates in zip(self.optimizers, self.configured):
            for group, lr in zip(opt.param_groups, rates):
                group["lr"] = lr * scale


def build_gan_step(cfg: Config, accelerator: Accelerator, G: nn.Module, D: nn.Module, cuda_graphs: bool,
                   total_steps: int = 0) -> GANStep:
    """G and D (dcgan.models.build_models) with their optimizers as configured, prepared by Accelerate (on the
    device, DDP-wrapped when several processes train), bound into a GANStep. total_steps: the run's, over which
    optim.lr_decay decays."""
    cuda = accelerator.device.type == "cuda"
    if accelerator.num_processes > 1 and cfg.model.sync_bn:
        G, D = convert_sync_batchnorm(G, use_cuda_sync_bn=cuda), convert_sync_batchnorm(D, use_cuda_sync_bn=cuda)
    if cfg.train.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms once
    opt_g = build_optimizer(G.parameters(), cfg.optim.lr_g, cfg.optim, capturable=cuda_graphs)
    opt_d = build_optimizer(D.parameters(), cfg.optim.lr_d, cfg.optim, capturable=cuda_graphs)
    if cfg.train.compile:
        G.compile(mode=cfg.train.compile_mode)  # in place: state_dict keys stay those of the plain modules
        D.compile(mode=cfg.train.compile_mode)
    G, D, opt_g, opt_d = accelerator.prepare(G, D, opt_g, opt_d)
    penalties = build_penalties(cfg.loss, accelerator.process_index, accelerator.num_processes)
    objective = Objective(build_loss(cfg.loss), penalties, cfg.loss.joint_batch)
    decay = LinearDecay([opt_g, opt_d], total_steps) if cfg.optim.lr_decay == "linear" and total_steps else None
    return GANStep(accelerator, G, D, opt_g, opt_d, objective, Schedule(decay, cfg.optim.d_steps))


def build_optimizer(params, lr: float, cfg: OptimConfig, capturable: bool) -> torch.optim.Optimizer:
    """optim.name's optimizer. capturable: its step counters stay on the GPU, as a captured step needs."""
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=cfg.alpha, momentum=cfg.momentum,
                                   foreach=cfg.fused or None, capturable=capturable)
    return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2), fused=cfg.fused or None,
                            capturable=capturable)


def graphed(step: GANStep, cuda_graphs: bool):
    """The step to call in the loop: captured as a CUDA graph after a few eager warm-up steps, or as it is."""
    return GraphedStep(step) if cuda_graphs else step

"""The quality search's levers: the Wasserstein loss with its gradient penalty, lazy R1, spectral norm, D
without BatchNorm, class maps joined to a conditional D's input, the EMA's start step, D steps per G step and G's
output bias. Each is asserted by
what it computes; the penalties' step is asserted to resume exactly (lazy R1 is due on some steps only)."""
import io

import pytest
import torch
from torch import nn

from support import TINY, assert_same_state, make_trainer
from dcgan.machinery.checkpoint import CheckpointError
from dcgan.config import ConfigError, load_config
from dcgan.train.ema import EmaGenerator
from dcgan.train.losses import R1, GradientPenalty, Wasserstein, build_penalties, squared_gradient_norms
from dcgan.models import NUM_CLASSES, Discriminator, build_models

PENALIZED = ["loss.name=wgan", "model.d_norm=none", "model.spectral_norm=true", "loss.r1_gamma=0.5",
             "loss.r1_every=2"]


class LinearCritic(nn.Module):
    """D(x) = <w, x>: its input gradient is w for every image, so the penalties have closed forms."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x, labels=None):
        return (x * self.w).flatten(1).sum(1)


def test_penalties_have_their_closed_forms():
    w = torch.full((1, 2, 2), 1.5)                      # |w| = 3
    D = LinearCritic(w)
    real, fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    assert torch.allclose(squared_gradient_norms(D, real, None), torch.full((4,), 9.0))
    assert GradientPenalty(10.0)(D, real, fake, None).item() == pytest.approx(10 * (3 - 1) ** 2)
    r1 = R1(gamma=0.5, every=4)
    assert r1(D, real, fake, None).item() == pytest.approx(0.5 / 2 * 4 * 9)
    assert [r1.due(s) for s in range(5)] == [True, False, False, False, True]
    # the penalties train D: R1 pulls |w| down
    r1(D, real, fake, None).backward()
    assert (D.w.grad > 0).all()
    loss = Wasserstein()
    assert loss.discriminator(torch.tensor([2.0, 4.0]), torch.tensor([1.0])).item() == pytest.approx(1 - 3)
    assert loss.generator(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2)


def test_gradient_penalty_mixing_weights_are_a_slice_of_the_global_batch():
    """Rank r of 2 draws the same mixing weights as rows r*n..(r+1)*n of one process holding both halves."""
    D = LinearCritic(torch.randn(1, 2, 2))
    D_sq = lambda x, labels=None: D(x) ** 2  # noqa: E731  a critic whose gradient depends on the mixture
    real, fake = torch.randn(8, 1, 2, 2), torch.randn(8, 1, 2, 2)
    torch.manual_seed(3)
    whole = GradientPenalty(1.0)(D_sq, real, fake, None)
    halves = []
    for rank in (0, 1):
        torch.manual_seed(3)
        halves.append(GradientPenalty(1.0, rank, 2)(D_sq, real[rank * 4:(rank + 1) * 4], fake[rank * 4:(rank + 1) * 4],
                                                    None))
    assert torch.allclose(whole, (halves[0] + halves[1]) / 2)
    torch.manual_seed(4)
    assert not torch.allclose(whole, GradientPenalty(1.0)(D_sq, real, fake, None))


def test_penalties_follow_the_config():
    cfg = load_config(None, PENALIZED)
    kinds = [type(p) for p in build_penalties(cfg.loss, 0, 1)]
    assert kinds == [GradientPenalty, R1]
    assert build_penalties(load_config(None, []).loss, 0, 1) == []


@pytest.mark.parametrize("override, names", [
    (["loss.name=wgan"], "model.d_norm=none"),
    (["loss.r1_gamma=1"], "model.d_norm=none"),
    (["loss.r1_every=0", "model.d_norm=none"], "loss.r1_every"),
    (["loss.gp_weight=-1"], "loss.gp_weight"),
    (["model.d_conditioning=concat"], "model.d_conditioning"),
    (["model.d_norm=layer"], "model.d_norm"),
    (["train.ema_start=-1"], "train.ema_start"),
    (["optim.d_steps=0"], "optim.d_steps"),
])
def test_bad_recipe_options_are_one_line(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    assert names in str(err.value) and "\n" not in str(err.value)


def test_spectral_norm_holds_each_layers_largest_singular_value_at_one():
    torch.manual_seed(0)
    _, D = build_models(32, 16, 8, 8, norm="none", spectral_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    for _ in range(30):                                # power iterations run in training forwards
        D(torch.randn(4, 1, 32, 32))
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    sigmas = [torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item() for m in convs]
    assert sigmas == pytest.approx([1.0] * len(convs), abs=0.05)
    raw = [torch.linalg.matrix_norm(m.parametrizations.weight.original.detach().flatten(1), ord=2).item()
           for m in convs]
    assert not raw == pytest.approx([1.0] * len(convs), abs=0.05)  # the stored weights are not normalized


def test_class_maps_joined_to_ds_input():
    torch.manual_seed(0)
    D = Discriminator(32, ndf=8, conditional=True, conditioning="input").eval()
    assert D.main[0].in_channels == 1 + NUM_CLASSES and D.embed is None
    images = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(D(images, torch.full((6,), 7)), D(images, torch.full((6,), 3)))
    # the maps are one-hot: digit k only reads input channel 1 + k
    with torch.no_grad():
        D.main[0].weight[:, 1 + 7].zero_()
        blind_to_seven = D(images, torch.full((6,), 7))
        D.main[0].weight[:, 1 + 3].zero_()
        assert torch.allclose(blind_to_seven, D(images, torch.full((6,), 3)))


def test_ema_copies_g_until_its_start_step():
    torch.manual_seed(0)
    G, _ = build_models(28, 16, 8, 8)
    ema = EmaGenerator(G, decay=0.999, calibration_noise=torch.randn(8, 16), batch_size=8, start=3)
    for step in range(5):
        with torch.no_grad():
            for p in G.parameters():
                p.add_(0.1)
        ema.update(G, step)
        same = all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), G.parameters()))
        assert same == (step < 3), f"step {step}"


def save(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_penalized_training_resumes_exactly(mnist_root, tmp_path):
    """Trainer state after 3 steps -> a fresh Trainer: the next step (lazy R1 due at even steps only, the decayed
    learning rate of step 3, not the saved one of step 2) is the same."""
    cfg = load_config(None, TINY + PENALIZED + [f"data.root={mnist_root}", "model.conditional=true",
                                                "model.d_conditioning=input", "optim.lr_decay=linear",
                                                "train.max_steps=4"])
    first = make_trainer(cfg, mnist_root, tmp_path / "first")
    for _ in range(3):
        stats = first.step_fn(*first.batches.batch(first.step), first.noise.next())
        first.step += 1
    assert torch.isfinite(stats.values).all() and first.gan.steps == 3
    second = make_trainer(cfg, mnist_root, tmp_path / "second")
    second.load_state_dict(torch.load(io.BytesIO(save(first.state_dict())), weights_only=True), tmp_path / "ckpt.pt")
    assert second.gan.steps == 3
    rng = torch.get_rng_state()  # the saved one: the gradient penalty's mixing weights come from it
    for t in (first, second):
        torch.set_rng_state(rng)
        t.step_fn(*t.batches.batch(t.step), t.noise.next())
    assert_same_state(first.state_dict(), second.state_dict())
    assert [t.gan.opt_g.param_groups[0]["lr"] for t in (first, second)] == [cfg.optim.lr_g * 0.25] * 2
    first.log.close()
    second.log.close()


def test_a_resume_that_changes_the_run_length_says_the_decay_moved(mnist_root, tmp_path):
    """Resuming a 4-step decaying run with train.max_steps=8 re-plans the decay: the rate at step 2 is 0.75 of
    the configured one, not 0.5. The log says so; a resume with the same length says nothing."""
    def trainer(max_steps: int, name: str):
        cfg = load_config(None, TINY + [f"data.root={mnist_root}", "optim.lr_decay=linear",
                                        f"train.max_steps={max_steps}"])
        return make_trainer(cfg, mnist_root, tmp_path / name)

    first = trainer(4, "first")
    for _ in range(2):
        first.step_fn(*first.batches.batch(first.step), first.noise.next())
        first.step += 1
    saved = torch.load(io.BytesIO(save(first.state_dict())), weights_only=True)
    for max_steps, name in ((4, "same"), (8, "longer")):
        resumed = trainer(max_steps, name)
        resumed.load_state_dict(saved, tmp_path / "ckpt.pt")
        resumed.log.close()
    assert "lr_decay" not in (tmp_path / "same" / "train.log").read_text()
    assert ("now spans 8 steps, not the 4 this run was started with: the learning rates go on at 0.75 of their "
            "configured values instead of 0.50") in (tmp_path / "longer" / "train.log").read_text()
    first.log.close()


def test_linear_lr_decay_follows_the_step():
    from accelerate import Accelerator
    from dcgan.train.step import build_gan_step

    cfg = load_config(None, TINY + ["optim.lr_decay=linear", "optim.lr_g=4e-4", "optim.lr_d=2e-4"])
    torch.manual_seed(0)
    G, D = build_models(28, 16, 8, 8)
    gan = build_gan_step(cfg, Accelerator(cpu=True), G, D, cuda_graphs=False, total_steps=4)
    lrs = []
    for _ in range(4):
        gan(torch.rand(8, 1, 28, 28) * 2 - 1, torch.zeros(8, dtype=torch.long), torch.randn(8, 16))
        lrs += [gan.opt_g.param_groups[0]["lr"], gan.opt_d.param_groups[0]["lr"]]
    assert lrs == pytest.approx([4e-4, 2e-4, 3e-4, 1.5e-4, 2e-4, 1e-4, 1e-4, 0.5e-4])
    gan.steps = 1                                   # as a resume sets it: the rate follows the step alone
    gan(torch.rand(8, 1, 28, 28) * 2 - 1, torch.zeros(8, dtype=torch.long), torch.randn(8, 16))
    assert gan.opt_g.param_groups[0]["lr"] == pytest.approx(3e-4)
    steady = build_gan_step(load_config(None, TINY), Accelerator(cpu=True), *build_models(28, 16, 8, 8),
                            cuda_graphs=False, total_steps=4)
    assert steady.schedule.lr_decay is None


def test_d_steps_update_g_on_every_kth_step_only():
    """optim.d_steps=2: D learns on every batch, G on every second; a step without a G update reports the last
    G loss. The due steps follow the step count, which a resume restores."""
    from accelerate import Accelerator
    from dcgan.train.step import build_gan_step

    torch.manual_seed(0)
    gan = build_gan_step(load_config(None, TINY + ["optim.d_steps=2"]), Accelerator(cpu=True),
                         *build_models(28, 16, 8, 8), cuda_graphs=False)
    moved_g, moved_d, losses_g = [], [], []
    for _ in range(4):
        before_g = [p.detach().clone() for p in gan.G.parameters()]
        before_d = [p.detach().clone() for p in gan.D.parameters()]
        stats = gan(torch.rand(8, 1, 28, 28) * 2 - 1, torch.zeros(8, dtype=torch.long), torch.randn(8, 16))
        moved_g.append(any(not torch.equal(a, b) for a, b in zip(before_g, gan.G.parameters())))
        moved_d.append(any(not torch.equal(a, b) for a, b in zip(before_d, gan.D.parameters())))
        losses_g.append(stats.values[1].item())
    assert moved_g == [False, True, False, True] and moved_d == [True] * 4
    assert losses_g[0] == 0.0 and losses_g[1] > 0 and losses_g[2] == losses_g[1] and losses_g[3] != losses_g[2]


def test_a_runs_discriminator_is_rebuilt_from_its_config():
    """evaluation.grey_probe reads D back: its normalization and spectral norm come from the run's config."""
    from dcgan.loading import build_discriminator
    from dcgan.models import models_for

    cfg = load_config(None, TINY + ["model.d_norm=none", "model.spectral_norm=true"])
    torch.manual_seed(0)
    _, D = models_for(cfg)
    D(torch.randn(4, 1, 28, 28))                              # a power iteration: u and v move
    again = build_discriminator(cfg.to_dict(), D.state_dict(), "ckpt.pt")
    images = torch.randn(4, 1, 28, 28)
    assert torch.equal(D.eval()(images), again.eval()(images))
    with pytest.raises(CheckpointError, match="discriminator"):
        build_discriminator(load_config(None, TINY).to_dict(), D.state_dict(), "ckpt.pt")
    recorded = cfg.to_dict()
    newer = {**recorded, "model": {**recorded["model"], "d_widget": 2}}        # a run made by a later version
    with pytest.raises(CheckpointError, match="does not fit this version") as err:
        build_discriminator(newer, D.state_dict(), "ckpt.pt")
    assert "\n" not in str(err.value)
    older = {**recorded, "model": {k: v for k, v in recorded["model"].items() if k != "d_norm"}}
    with pytest.raises(CheckpointError, match="discriminator"):   # before d_norm existed, D had BatchNorm
        build_discriminator(older, D.state_dict(), "ckpt.pt")


def test_g_output_bias_starts_the_generator_on_black_and_is_rebuilt_from_the_config():
    """model.g_output_bias: G's output layer learns a bias that starts at the given value, so an untrained G draws
    near-black images (tanh(-3) = -0.995) instead of mid-grey ones. Without it G has no output bias, so checkpoints
    made before the option existed still load."""
    from dcgan.loading import build_generator
    from dcgan.models import models_for

    torch.manual_seed(0)
    plain = models_for(load_config(None, TINY))[0].eval()
    cfg = load_config(None, TINY + ["model.g_output_bias=-3"])
    G = models_for(cfg)[0].eval()
    z = torch.randn(8, 16)
    assert plain(z).abs().mean() < 0.1 and G(z).max() < -0.99
    assert set(G.state_dict()) - set(plain.state_dict()) == {f"main.{len(G.main) - 2}.bias"}
    G.train()
    G(torch.randn(8, 16)).mean().backward()
    bias = G.main[-2].bias
    assert bias.requires_grad and bias.grad.abs().item() > 0            # learned, not a fixed offset
    with torch.no_grad():
        bias.add_(1.0)                                                      # as if trained: -2
    again = build_generator(cfg.to_dict(), G.state_dict(), "generator", "ckpt.pt")
    assert torch.equal(again(z), G.eval()(z))
    with pytest.raises(CheckpointError, match="generator"):               # the bias needs the option's config
        build_generator(load_config(None, TINY).to_dict(), G.state_dict(), "generator", "ckpt.pt")


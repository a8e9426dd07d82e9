"""CUDA code paths, on a machine with a GPU: fp16 with loss scaling, the CUDA noise generator's state across a
resume, steps captured as CUDA graphs, and torch.nn.SyncBatchNorm across processes. Skipped without CUDA (CI has
none): `pytest -m gpu` on a GPU machine."""
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from support import TINY, check_synced_batchnorm, load_ckpt, only_run_dir, run_train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ON_GPU = [o for o in TINY if o != "train.cpu=true"] + ["train.cpu=false"]


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("conditional", [False, True])
def test_fp16_training_with_loss_scaling(mnist_root, tmp_path, conditional):
    """A whole run in fp16 with CUDA graphs, unconditional and conditional."""
    run_train(ON_GPU + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.epochs=2",
                        "train.mixed_precision=fp16", f"model.conditional={conditional}"])
    run_dir = only_run_dir(tmp_path)
    log = (run_dir / "train.log").read_text()
    assert "1 process(es) on cuda" in log and "CUDA graphs True" in log
    state = load_ckpt(run_dir)
    assert state["step"] == 32 and finite(state["generator"]) and finite(state["discriminator"])
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert "amp/loss_scale" in events.Tags()["scalars"]


def test_fp16_training_with_the_penalized_recipe(mnist_root, tmp_path):
    """The mnist32 recipe's step in fp16 (eager: none of it can be captured): lazy R1's double backward under the
    loss scaler, RMSprop, a decaying learning rate. A penalty that overflowed in fp16 would make the scaler skip
    its steps: most steps must update D."""
    run_train(ON_GPU + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.epochs=2",
                        "train.mixed_precision=fp16", "train.cuda_graphs=false", "model.d_norm=none",
                        "loss.r1_gamma=1", "loss.r1_every=4", "optim.name=rmsprop", "optim.lr_decay=linear"])
    run_dir = only_run_dir(tmp_path)
    assert "CUDA graphs False" in (run_dir / "train.log").read_text()
    state = load_ckpt(run_dir)
    assert state["step"] == 32 and finite(state["generator"]) and finite(state["discriminator"])
    skipped = EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("amp/skipped_steps_D")[-1].value
    assert skipped < 16, f"the loss scaler skipped {skipped:.0f} of 32 D steps"


def test_resume_on_gpu_continues_the_cuda_noise_stream(mnist_root, tmp_path):
    common = ON_GPU + [f"data.root={mnist_root}", "train.epochs=100", "train.max_steps=20", "train.keep_last=100"]
    run_train(common + [f"train.out_dir={tmp_path / 'straight'}"])
    straight = load_ckpt(only_run_dir(tmp_path / "straight"), 20)
    # The first half eager, the second graphed: the resumed Adam must become capturable despite the checkpoint.
    run_train(common + [f"train.out_dir={tmp_path / 'halves'}", "train.max_steps=10", "train.cuda_graphs=false"])
    run_train(common + [f"train.out_dir={tmp_path / 'halves'}", "train.resume=latest"])
    resumed = load_ckpt(only_run_dir(tmp_path / "halves"), 20)
    assert resumed["rng"]["noise"].device.type == "cpu"    # torch.Generator state is a CPU byte tensor
    assert torch.equal(resumed["rng"]["noise"], straight["rng"]["noise"])
    # cuDNN's autotuned kernels may differ in rounding between processes: close, not necessarily bit-equal.
    gap = max((resumed["generator"][k].float() - v.float()).abs().max().item()
              for k, v in straight["generator"].items() if v.is_floating_point())
    print(f"max |G param| gap, resumed vs straight: {gap:.2e}")
    assert gap < 1e-2


def test_cuda_syncbatchnorm_two_processes_match_one(tmp_path):
    check_synced_batchnorm("cuda", "SyncBatchNorm", tmp_path)


@pytest.mark.parametrize("conditional", [False, True])
def test_cuda_graph_steps_train_like_eager_steps(conditional):
    """The captured step does what the eager step does: same start, same inputs -> same weights after 10 steps
    (3 eager warm-up steps, then the capture, then replays). A graph that replayed stale inputs or skipped the
    optimizer would miss by about as much as the weights moved. Conditional: the labels are graph inputs too."""
    from accelerate import Accelerator
    from dcgan.config import load_config
    from dcgan.machinery.cuda_graph import GraphedStep
    from dcgan.models import build_models
    from dcgan.train.step import build_gan_step, graphed

    def weights(*modules):
        return torch.cat([p.detach().float().flatten() for m in modules for p in m.parameters()])

    runs = {}
    for graphs in (False, True):
        cfg = load_config("configs/mnist64.yaml", ["model.ngf=16", "model.ndf=16", "train.batch_size=32",
                                                   "train.mixed_precision=fp16", f"train.cuda_graphs={graphs}",
                                                   f"model.conditional={conditional}"])
        accelerator = Accelerator(mixed_precision="fp16")
        torch.manual_seed(0)
        G, D = build_models(64, 100, 16, 16, conditional=conditional)
        gan = build_gan_step(cfg, accelerator, G, D, cuda_graphs=graphs)
        G, D = gan.G, gan.D
        start = weights(G, D)
        step = graphed(gan, graphs)
        assert isinstance(step, GraphedStep) == graphs
        data = torch.Generator(device="cuda").manual_seed(1)
        for _ in range(10):
            real = torch.rand(32, 1, 64, 64, device="cuda", generator=data) * 2 - 1
            labels = torch.randint(0, 10, (32,), device="cuda", generator=data)
            stats = step(real, labels, torch.randn(32, 100, device="cuda", generator=data))
        runs[graphs] = (weights(G, D), stats.values.clone(), accelerator.scaler.get_scale())
    moved = (runs[False][0] - start).abs().max().item()
    gap = (runs[True][0] - runs[False][0]).abs().max().item()
    print(f"max |weight| gap graphed vs eager after 10 steps: {gap:.2e} (weights moved {moved:.2e})")
    assert moved > 1e-4 and gap < moved / 100
    assert torch.allclose(runs[True][1], runs[False][1], rtol=1e-2, atol=1e-3)   # loss_D, loss_G, D(x), D(G(z))
    assert runs[True][2] == runs[False][2]                                        # the loss scale evolved alike

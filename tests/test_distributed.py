"""Real multi-process runs (torchrun, gloo on CPU): ranks stay identical, and synced BatchNorm makes
2 processes x batch B/2 train like 1 process x batch B."""
import pytest
import torch

from support import TINY, check_synced_batchnorm, load_ckpt, only_run_dir, run_train

pytestmark = pytest.mark.distributed


def test_two_processes_stay_identical(mnist_root, tmp_path):
    prefix = tmp_path / "final"
    run_train([str(prefix)] + TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.max_steps=6"],
              nproc=2, script="tests/helpers/ddp_check.py")
    ranks = [torch.load(f"{prefix}.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [6, 6]
    for name in ("generator", "discriminator", "ema"):
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between the processes"
    shards = [r["shard"] for r in ranks]
    assert [list(s.shape) for s in shards] == [[16, 16], [16, 16]]
    everything = torch.cat([s.flatten() for s in shards])
    assert len(set(everything.tolist())) == everything.numel()              # no image on both processes
    log = (only_run_dir(tmp_path) / "train.log").read_text()
    assert "2 process(es) on cpu, global batch 32 (16 per process)" in log and "synced BN True" in log


def params(run_dir) -> torch.Tensor:
    state = load_ckpt(run_dir)
    return torch.cat([v.flatten() for part in ("generator", "discriminator")
                      for k, v in state[part].items() if v.is_floating_point() and "running" not in k])


def test_synced_batchnorm_matches_single_process(mnist_root, tmp_path):
    common = TINY + [f"data.root={mnist_root}", "train.max_steps=8", "train.batch_size=32"]
    runs = {}
    for name, nproc, sync in (("one", 1, True), ("two_synced", 2, True), ("two_unsynced", 2, False)):
        out = tmp_path / name
        run_train(common + [f"train.out_dir={out}", f"model.sync_bn={str(sync).lower()}"], nproc=nproc)
        runs[name] = params(only_run_dir(out))
    synced_gap = (runs["two_synced"] - runs["one"]).abs().max().item()
    unsynced_gap = (runs["two_unsynced"] - runs["one"]).abs().max().item()
    moved = (runs["one"] - params_at_init(mnist_root, tmp_path)).abs().max().item()
    print(f"max |param| gap to 1 process: synced {synced_gap:.2e}, unsynced {unsynced_gap:.2e}; moved {moved:.2e}")
    assert synced_gap < 1e-4                    # float rounding only
    assert unsynced_gap > 20 * max(synced_gap, 1e-6)   # without sync the test would fail
    assert moved > 50 * synced_gap              # and training really moved the weights


def params_at_init(mnist_root, tmp_path):
    from dcgan.models import build_models
    torch.manual_seed(0)  # accelerate.utils.set_seed(train.seed=0) before the models are built
    G, D = build_models(28, nz=16, ngf=8, ndf=8)
    return torch.cat([v.detach().flatten() for m in (G, D) for k, v in m.state_dict().items()
                      if v.is_floating_point() and "running" not in k])


def test_allreduce_batchnorm_two_processes_match_one(tmp_path):
    check_synced_batchnorm("cpu", "AllReduceBatchNorm2d", tmp_path)


def test_gradient_penalties_two_processes_match_one(mnist_root, tmp_path):
    """WGAN-GP + lazy R1 + spectral norm (no BatchNorm in D) + 2 D steps per G step: the penalties run on the
    module DDP wraps, and the gradient penalty's mixing weights are each process's slice of the global batch's, so
    2 processes x 16 images train exactly like 1 process x 32."""
    common = TINY + [f"data.root={mnist_root}", "train.max_steps=6", "loss.name=wgan", "model.d_norm=none",
                     "model.spectral_norm=true", "loss.r1_gamma=1", "loss.r1_every=2",
                     "optim.d_steps=2"]
    runs = {}
    for name, nproc in (("one", 1), ("two", 2)):
        run_train(common + [f"train.out_dir={tmp_path / name}"], nproc=nproc)
        runs[name] = params(only_run_dir(tmp_path / name))
    gap = (runs["two"] - runs["one"]).abs().max().item()
    print(f"max |param| gap to 1 process: {gap:.2e}")
    assert torch.isfinite(runs["one"]).all() and gap < 1e-4

"""Resume is exact: 2k steps straight == k steps, SIGKILL, resume from step k, k more steps."""
import signal
import subprocess
import time

import pytest
import torch

from support import ROOT, TINY, assert_same_state, load_ckpt, only_run_dir, run_train, subprocess_env, train_command
from dcgan.machinery import rundir
from dcgan.machinery.checkpoint import CheckpointError, atomic_save, save_checkpoint


def wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"trainer exited early:\n{proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_kill_and_resume_matches_straight_run(mnist_root, tmp_path):
    k = 10  # 16 steps per epoch: the resumed half crosses an epoch boundary
    common = TINY + [f"data.root={mnist_root}", "train.epochs=100", "train.keep_last=1000"]

    run_train(common + [f"train.out_dir={tmp_path / 'straight'}", f"train.max_steps={2 * k}"])
    straight = load_ckpt(only_run_dir(tmp_path / "straight"), 2 * k)

    # A long run (1600 steps) checkpointing every k steps, killed without warning once step k is on disk.
    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(train_command(common + [f"train.out_dir={killed_out}", f"train.checkpoint_every={k}"]),
                            cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(killed_out / "000-mnist64" / "checkpoints" / f"ckpt-{k:08d}.pt", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt_k = killed_out / "000-mnist64" / "checkpoints" / f"ckpt-{k:08d}.pt"
    state = torch.load(ckpt_k, weights_only=True)
    assert 0 < state["train_seconds"] < 120
    atomic_save({**state, "train_seconds": 1000.0}, ckpt_k)

    resumed_dir = tmp_path / "resumed"
    result = run_train(common + [f"train.resume={ckpt_k}", f"train.run_dir={resumed_dir}", f"train.max_steps={2 * k}"])
    assert f"resumed from {ckpt_k} at step {k}" in result.stdout + result.stderr
    resumed = load_ckpt(resumed_dir, 2 * k)
    assert resumed["step"] == straight["step"] == 2 * k
    assert_same_state(straight, resumed)
    # training time carries over: the resumed run's clock starts from the checkpoint's (set to 1000 s), not zero
    assert 1000 < resumed["train_seconds"] < 1000 + 120


def test_resume_latest_continues_the_newest_run(mnist_root, tmp_path):
    common = TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.epochs=2"]
    run_train(common + ["train.max_steps=5"])
    result = run_train(common + ["train.resume=latest"])
    run_dir = only_run_dir(tmp_path)                      # continued in the same run dir
    assert "resumed from" in result.stdout + result.stderr and load_ckpt(run_dir)["step"] == 32


def test_resolve_rules(tmp_path):
    out = tmp_path / "runs"
    first, resume = rundir.resolve(str(out), "", "exp", "")
    assert first.name == "000-exp" and resume is None
    second, _ = rundir.resolve(str(out), "", "exp", "")
    assert second.name == "001-exp"
    # latest with no checkpoint anywhere: a fresh start (a requeued job that never checkpointed)
    fresh, resume = rundir.resolve(str(out), "", "exp", "latest")
    assert fresh.name == "002-exp" and resume is None
    for step in (5, 10):
        atomic_save({"step": step}, first / "checkpoints" / f"ckpt-{step:08d}.pt")
    target, resume = rundir.resolve(str(out), "", "exp", "latest")
    assert target == first and resume.name == "ckpt-00000010.pt"
    # a newer run of another config is not this config's latest
    other, _ = rundir.resolve(str(out), "", "other", "")
    atomic_save({"step": 1}, other / "checkpoints" / "ckpt-00000001.pt")
    assert rundir.resolve(str(out), "", "exp", "latest") == (first, resume)
    assert rundir.resolve(str(out), "", "other", "latest")[0] == other
    pinned, resume = rundir.resolve(str(out), str(tmp_path / "pinned"), "exp", "latest")
    assert pinned == tmp_path / "pinned" and resume is None
    with pytest.raises(CheckpointError):
        rundir.resolve(str(out), "", "exp", str(tmp_path / "missing.pt"))


def test_atomic_save_and_keep_last(tmp_path):
    for step in range(1, 6):
        save_checkpoint({"step": step}, tmp_path, step, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt-00000004.pt", "ckpt-00000005.pt"]       # no temp files left behind


def test_resumed_optimizer_keeps_this_runs_implementation():
    """A checkpoint of a plain Adam resumed by a run configured for fused, capturable Adam (a CUDA-graph run)
    keeps the state but not the saved run's implementation flags, which plain load_state_dict would adopt."""
    from dcgan.machinery.checkpoint import load_optimizer_state
    param = torch.nn.Parameter(torch.ones(4))
    saved_run = torch.optim.Adam([param], lr=1e-3, foreach=False)
    param.grad = torch.full_like(param, 0.5)
    saved_run.step()
    saved = saved_run.state_dict()

    def new_optimizer():
        return torch.optim.Adam([param], lr=1e-3, fused=True, capturable=True)

    plain = new_optimizer()
    plain.load_state_dict(saved)
    assert plain.param_groups[0]["fused"] is None          # what this test guards against

    resumed = new_optimizer()
    load_optimizer_state(resumed, saved)
    group, state = resumed.param_groups[0], resumed.state[param]
    assert group["fused"] is True and group["capturable"] is True and group["foreach"] is None
    assert state["step"].dtype == torch.float32 and state["step"].item() == 1.0      # placed for fused Adam
    assert torch.equal(state["exp_avg"], saved["state"][0]["exp_avg"])
    resumed.step()                                                                    # and it still steps
    assert resumed.state[param]["step"].item() == 2.0

"""SIGTERM / SIGUSR1: every process stops after the same step, writes a checkpoint, and a resume loses nothing."""
import signal
import subprocess
import time

import psutil
import pytest

from support import ROOT, TINY, assert_same_state, load_ckpt, only_run_dir, run_train, subprocess_env, train_command

pytestmark = pytest.mark.distributed


def wait_for_checkpoint(out_dir, proc, timeout=120):
    deadline = time.time() + timeout
    while not list(out_dir.glob("*/checkpoints/ckpt-*.pt")):
        assert proc.poll() is None, "trainer exited before its first checkpoint"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_signal_to_one_rank_stops_all_and_resume_is_exact(mnist_root, tmp_path):
    total = 64  # 4 epochs of 16 steps: the signal comes at the first checkpoint (step 8), ~5 s before the end
    common = TINY + [f"data.root={mnist_root}", f"train.max_steps={total}", "train.epochs=100", "train.checkpoint_every=8"]
    run_train(common + [f"train.out_dir={tmp_path / 'straight'}"], nproc=2)
    straight = load_ckpt(only_run_dir(tmp_path / "straight"), total)

    out = tmp_path / "interrupted"
    proc = subprocess.Popen(train_command(common + [f"train.out_dir={out}"], nproc=2), cwd=ROOT,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_checkpoint(out, proc)
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        workers[-1].send_signal(signal.SIGUSR1)  # one rank only, as a node-local signal would
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    run_dir = only_run_dir(out)
    log = (run_dir / "train.log").read_text()
    assert "stopping at step" in log, output[-3000:]
    stopped_at = int(log.split("stopping at step ")[1].split()[0])
    assert 0 < stopped_at < total
    assert load_ckpt(run_dir)["step"] == stopped_at  # the checkpoint of the very step it stopped after

    run_train(common + [f"train.out_dir={out}", "train.resume=latest"], nproc=2)
    assert f"resumed from {run_dir}/checkpoints/ckpt-{stopped_at:08d}.pt" in (run_dir / "train.log").read_text()
    assert_same_state(straight, load_ckpt(run_dir, total))


def test_sigterm_exit_code_single_process(mnist_root, tmp_path):
    proc = subprocess.Popen(train_command(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}",
                                                  "train.epochs=1000", "train.checkpoint_every=8"]),
                            cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(tmp_path, proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    log = (only_run_dir(tmp_path) / "train.log").read_text()
    step = int(log.split("stopping at step ")[1].split()[0])
    assert load_ckpt(only_run_dir(tmp_path))["step"] == step

"""`sbatch slurm/train.sbatch` on a real SLURM cluster: 2 nodes (own network namespaces and addresses) x 1
process, started by tests/slurm/local_slurm.sh. Skips where that cannot run (not root, no apt, no namespaces).
The README's SLURM commands (one-node training, the evaluation job after it) run in tests/test_readme.py."""
import subprocess
import time
from pathlib import Path

import pytest

from support import ROOT, TINY, assert_same_state, job_state, load_ckpt, wait_job

pytestmark = pytest.mark.slurm

STEPS = 48  # 3 epochs of 16 steps on the small IDX set


def submit(env, run_dir: Path, overrides: list[str], nodes: int = 2) -> str:
    out = subprocess.run(["sbatch", "--parsable", f"--nodes={nodes}", f"--output={run_dir.parent}/%x-%j.out",
                          f"--export=ALL,RUN_DIR={run_dir}", "slurm/train.sbatch", *overrides],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def job_config(mnist_root) -> list[str]:
    """As the README writes it: `sbatch slurm/train.sbatch --config FILE key=value ...` (the script puts its own
    overrides before these: options and overrides mix in any order). The conditional config: its labels are
    sharded with the images across nodes; the README's unconditional SLURM commands run in tests/test_readme.py."""
    return ["--config", "configs/mnist32_cond.yaml", *TINY, f"data.root={mnist_root}", "train.epochs=3",
            "train.checkpoint_every=8"]


@pytest.fixture(scope="module")
def baseline(slurm_env, mnist_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("slurm") / "baseline"
    start = time.time()
    job = submit(slurm_env, run_dir, job_config(mnist_root))
    state = wait_job(slurm_env, job)
    output = (run_dir.parent / f"dcgan-{job}.out").read_text()
    assert state == "COMPLETED", output[-4000:]
    print(f"2-node job: submit to finish {time.time() - start:.1f} s")
    return run_dir, output


def test_two_node_job_completes(baseline):
    run_dir, output = baseline
    assert "2 node(s) x 1 process(es)" in output
    assert "2 process(es) on cpu, global batch 32 (16 per process)" in (run_dir / "train.log").read_text()
    state = load_ckpt(run_dir)
    assert state["step"] == STEPS and state["config"]["model"]["conditional"] is True
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "generator.pt").is_file()


@pytest.mark.parametrize("interruption", [pytest.param("requeue", marks=pytest.mark.slow), "time_limit_signal"])
def test_interrupted_job_resumes_and_matches_uninterrupted_run(slurm_env, baseline, mnist_root, interruption):
    """requeue: `scontrol requeue` (what preemption does: SIGTERM to every process, then requeue).
    time_limit_signal: SIGUSR1 to the batch shell only, as `--signal=B:USR1@120` sends it before the time
    limit; the script forwards it, waits for the checkpoint and requeues the job itself."""
    run_dir = baseline[0].parent / interruption
    start = time.time()
    job = submit(slurm_env, run_dir, job_config(mnist_root))
    deadline = time.time() + 120
    while not list((run_dir / "checkpoints").glob("ckpt-*.pt")):
        assert time.time() < deadline and job_state(slurm_env, job) in ("PENDING", "CONFIGURING", "RUNNING"), \
            "the job never wrote its first checkpoint"
        time.sleep(0.1)
    if interruption == "requeue":
        subprocess.run(["scontrol", "requeue", job], env=slurm_env, check=True)
    else:
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=slurm_env, check=True)
    state = wait_job(slurm_env, job)
    output = (run_dir.parent / f"dcgan-{job}.out").read_text()
    assert state == "COMPLETED", output[-4000:]
    print(f"{interruption} and resume: submit to finish {time.time() - start:.1f} s")
    log = (run_dir / "train.log").read_text()
    assert "restart 1:" in output and "stopping at step" in log and "resumed from" in log, output[-4000:]
    stopped_at = int(log.split("stopping at step ")[1].split()[0])
    assert f"resumed from {run_dir}/checkpoints/ckpt-{stopped_at:08d}.pt at step {stopped_at}" in log
    final = load_ckpt(run_dir)
    assert final["step"] == STEPS
    assert_same_state(load_ckpt(baseline[0]), final)

"""`sbatch slurm/train.sbatch` on a real SLURM cluster: 2 nodes (own network namespaces and addresses) x 1
process, started by tests/slurm/local_slurm.sh. Skips where that cannot run (not root, no apt, no namespaces).
The README's SLURM commands (one-node training, the evaluation job after it) run in tests/test_readme.py."""
import re
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


@pytest.mark.slow
def test_two_slurm_workers_fill_one_study(slurm_env, tmp_path, mnist_root, tiny_classifier):
    """`sbatch --array=0-1 slurm/search.sbatch FILE` on the 2-node cluster: 4 trials, each once, then the report
    job. Each worker takes at most 2 (--max-trials-here), so both must have worked, whichever starts first."""
    pytest.importorskip("optuna", reason="the search needs requirements-search.txt")
    from test_search import search_file, study_of
    path = search_file(tmp_path, mnist_root, trials=4)
    env = slurm_env | {"DCGAN_CACHE": str(tiny_classifier.parent)}
    # --exclusive: a node each (the cluster's nodes have 2 cores, room for both tasks on one)
    submitted = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--exclusive",
                                f"--output={tmp_path}/%x-%A_%a.out", "slurm/search.sbatch", str(path), "--max-trials-here", "2"],
                               cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    array = submitted.stdout.strip().split(";")[0]
    for task in (0, 1):
        assert wait_job(env, f"{array}_{task}", timeout=600) == "COMPLETED", \
            (tmp_path / f"search-{array}_{task}.out").read_text()[-3000:]
    report = re.search(r"report job (\d+) runs after array", (tmp_path / f"search-{array}_0.out").read_text())
    assert report and wait_job(env, report.group(1)) == "COMPLETED" and (tmp_path / "runs/tiny/search.md").is_file()
    trials = study_of(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({t.user_attrs["run"] for t in trials}) == 4                 # no trial run twice
    nodes = {t.user_attrs["worker"].split("/")[0] for t in trials}
    assert len(nodes) == 2, nodes                                          # both workers took trials

"""python -m experiments.search: an Optuna study whose trials are ordinary runs of tiny models on the small IDX
set, judged by the tiny classifier. The budget is met exactly, a stopped or killed worker's trial is re-queued and
resumed from its checkpoint, a diverging trial is pruned with its reason, bad input is one line, the report and
best.yaml are written (the slow tier: trials train); bad input in the default tier. Two SLURM workers filling one
study: tests/test_slurm.py."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support import ROOT, TINY, subprocess_env

optuna = pytest.importorskip("optuna", reason="the search needs requirements-search.txt")

SETTINGS = {**dict(a.split("=", 1) for a in TINY), "train.epochs": 3, "train.checkpoint_every": 8}


def search_file(tmp_path: Path, mnist_root: Path, trials: int = 3, **extra) -> Path:
    spec = {"name": "tiny", "base": "configs/mnist32.yaml",
            "settings": {**SETTINGS, "data.root": str(mnist_root), "train.out_dir": str(tmp_path / "runs")},
            "evaluation": {"every_epochs": 1, "metrics": "clf_fid,coverage,background", "num_samples": 100},
            "space": {"optim.lr_g": {"log": [1.0e-3, 3.0e-3]}, "loss.r1_every": {"int": [4, 16]},
                      "optim.lr_decay": ["none", "linear"]},
            "objective": {"metric": "clf_fid", "direction": "minimize"}, "trials": trials, "heartbeat_seconds": 1,
            **extra}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def env_with(classifier: Path) -> dict:
    return subprocess_env() | {"DCGAN_CACHE": str(classifier.parent)}


def search(path: Path, classifier: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.search", str(path), *args], cwd=ROOT,
                          env=env_with(classifier), capture_output=True, text=True, timeout=timeout)


def study_of(tmp_path: Path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "runs" / "tiny" / "study.journal")))
    return optuna.load_study(study_name="tiny", storage=storage)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


@pytest.mark.slow
def test_a_search_fills_its_budget_reports_and_continues(tmp_path, mnist_root, tiny_classifier):
    path = search_file(tmp_path, mnist_root, trials=3)
    first = search(path, tiny_classifier)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    study = study_of(tmp_path)
    assert states(study) == ["COMPLETE"] * 3
    folder = tmp_path / "runs" / "tiny"
    for trial in study.trials:   # each an ordinary run dir, with the values the trial chose
        run = folder / trial.user_attrs["run"]
        recorded = yaml.safe_load((run / "config.yaml").read_text())
        assert recorded["optim"]["lr_g"] == pytest.approx(trial.params["optim.lr_g"])
        assert recorded["loss"]["r1_every"] == trial.params["loss.r1_every"] and (run / "generator.pt").is_file()
        assert trial.value == pytest.approx(trial.intermediate_values[3])   # the last evaluation's clf_fid
    # the same command again: the budget is spent, nothing runs; a larger budget adds exactly the difference
    again = search(path, tiny_classifier)
    assert again.returncode == 0 and "0 trial(s) run here" in again.stdout
    more = search(path, tiny_classifier, "--trials", "40", "--max-trials-here", "1")   # 40: random start-up draws
    assert more.returncode == 0 and "1 trial(s) run here" in more.stdout and len(study_of(tmp_path).trials) == 4
    first, *_, added = study_of(tmp_path).trials      # the continuing worker draws anew, not the first's proposals
    assert added.params != first.params
    report = search(path, tiny_classifier, "--report")
    assert report.returncode == 0, report.stderr
    text = (folder / "search.md").read_text()
    best = min(study_of(tmp_path).trials, key=lambda t: t.value)
    assert f"| {best.number} | {best.user_attrs['run']} |" in text.split("## Best trials")[1].splitlines()[4]
    for image in ("search_history.png", "search_importances.png", "search_parallel.png", "search_slices.png",
                  "best-trials/quality.png", "best-trials/samples.png"):
        assert f"]({image})" in text and (folder / image).is_file(), image
    # best.yaml trains as is
    config = yaml.safe_load((folder / "best.yaml").read_text())
    assert config["optim"]["lr_g"] == pytest.approx(best.params["optim.lr_g"])
    trained = subprocess.run([sys.executable, "train_ddp.py", "--config", str(folder / "best.yaml"),
                              "train.max_steps=2", f"train.out_dir={tmp_path / 'best'}"], cwd=ROOT,
                             env=env_with(tiny_classifier), capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0 and "done: 2 steps" in trained.stdout + trained.stderr


@pytest.mark.slow
def test_a_diverging_trial_is_pruned_with_its_reason_and_the_study_goes_on(tmp_path, mnist_root, tiny_classifier):
    # lr 1e6 sends the losses to NaN in the second epoch; seed 10 draws it first, then lr 1e-3, which trains.
    path = search_file(tmp_path, mnist_root, trials=2, sampler="random", seed=10,
                       space={"optim.name": ["rmsprop"], "optim.lr_d": [1.0e6, 1.0e-3]})
    result = search(path, tiny_classifier)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    diverged, healthy = study_of(tmp_path).trials
    assert diverged.params["optim.lr_d"] == 1.0e6 and diverged.state.name == "PRUNED"
    assert diverged.user_attrs["reason"] == "epoch 2: diverged: loss_D is nan, not a number any more"
    assert healthy.params["optim.lr_d"] == 1.0e-3 and healthy.state.name == "COMPLETE"
    assert "trial 0: pruned" in result.stdout and "(epoch 2: diverged: loss_D is nan" in result.stdout


def wait_for(condition, timeout: float = 120, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_stopped_or_killed_worker_s_trial_is_resumed(tmp_path, mnist_root, tiny_classifier, how):
    """stopped: SIGTERM to the worker (Ctrl-C, preemption): its trial is re-queued at once. killed: SIGKILL to the
    worker and its run (a lost node): the next worker finds the trial silent for 4 heartbeats and re-queues it."""
    path = search_file(tmp_path, mnist_root, trials=2, settings={**SETTINGS, "data.root": str(mnist_root),
                                                                "train.out_dir": str(tmp_path / "runs"),
                                                                "train.epochs": 12})
    worker = subprocess.Popen([sys.executable, "-m", "experiments.search", str(path)], cwd=ROOT,
                              env=env_with(tiny_classifier), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    first = tmp_path / "runs" / "tiny" / "trial-0000"
    wait_for(lambda: len(list((first / "checkpoints").glob("ckpt-*.pt"))) >= 2, what="trial 0's checkpoints")
    if how == "stopped":
        worker.send_signal(signal.SIGTERM)
    else:
        os.killpg(worker.pid, signal.SIGKILL)
    output = worker.communicate(timeout=120)[0]
    assert worker.returncode == (128 + signal.SIGTERM if how == "stopped" else -signal.SIGKILL), output[-2000:]
    steps_then = max(int(p.stem.split("-")[1]) for p in (first / "checkpoints").glob("ckpt-*.pt"))
    if how == "killed":
        assert states(study_of(tmp_path)) == ["RUNNING"]   # nobody has looked yet
        time.sleep(4 * 1 + 1)                              # 4 missed heartbeats
    again = search(path, tiny_classifier)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    trials = study_of(tmp_path).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    reason = trials[0].user_attrs["reason"]
    assert ("was stopped (a signal)" if how == "stopped" else "stopped (no heartbeat") in reason and "re-queued" in reason
    assert trials[1].params == trials[0].params and trials[1].user_attrs["run"] == "trial-0000"
    log = (first / "train.log").read_text()
    assert f"resumed from {first / 'checkpoints'}" in log or f"ckpt-{steps_then:08d}" in log.split("resum")[-1]
    assert "trial 1 (trial-0000, resumed)" in again.stdout


@pytest.mark.parametrize("space, says", [
    ({"optim.lrg": [1.0e-3]}, "unknown key 'optim.lrg' (did you mean optim.lr_g?)"),
    ({"optim.lr_g": {"log": [3.0e-3, 1.0e-4]}}, "is an empty or inverted range"),
    ({"optim.lr_g": {"uniform": [1.0e-3, 1.0e-3]}}, "is an empty or inverted range"),
    ({"optim.lr_g": []}, "a list of choices needs at least one"),
    ({"model.d_norm": ["none", "layer"]}, "value layer is rejected: model.d_norm"),
    ({"optim.lr_g": {"log": [0.0, 1.0e-3]}}, "needs low > 0"),
    ({"optim.beta1": {"uniform": [0.0, 0.9], "when": {"optim.nam": "adam"}}}, "when: unknown key 'optim.nam'"),
])
def test_a_bad_space_is_refused_with_one_line(tmp_path, mnist_root, space, says):
    from experiments.search_space import SearchError, load_search
    with pytest.raises(SearchError, match=re.escape(says)) as refused:
        load_search(search_file(tmp_path, mnist_root, space=space))
    assert "\n" not in str(refused.value)


def test_a_bad_search_file_is_one_line_before_anything_trains(tmp_path, mnist_root, tiny_classifier):
    result = search(search_file(tmp_path, mnist_root, space={"optim.lrg": [1.0e-3]}), tiny_classifier)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "unknown key 'optim.lrg' (did you mean optim.lr_g?)" in result.stderr and not (tmp_path / "runs").exists()


def test_other_bad_input_is_one_line(tmp_path, mnist_root, tiny_classifier):
    from experiments.search_space import SearchError, load_search
    with pytest.raises(SearchError, match="objective metric 'fid' is not measured by eval.metrics"):
        load_search(search_file(tmp_path, mnist_root, objective={"metric": "fid"}))
    with pytest.raises(SearchError, match="search file .*nowhere.yaml does not exist"):
        load_search(tmp_path / "nowhere.yaml")
    path = search_file(tmp_path, mnist_root)
    unreachable = search(path, tiny_classifier, "--storage", f"sqlite:///{tmp_path}/no/such/folder/study.db")
    assert unreachable.returncode == 2 and unreachable.stderr.count("\n") == 1
    assert unreachable.stderr.startswith(f"error: storage sqlite:///{tmp_path}/no/such/folder/study.db is unreachable")
    without = subprocess.run([sys.executable, "-c", "import sys; sys.modules['optuna'] = None\n"
                              "from experiments.search import main\nsys.exit(main([sys.argv[1]]))", str(path)],
                             cwd=ROOT, env=env_with(tiny_classifier), capture_output=True, text=True, timeout=120)
    assert without.returncode == 2 and without.stderr == ("error: searching needs Optuna: pip install -r "
                                                          "requirements-search.txt\n")
    other = search_file(tmp_path, mnist_root, space={"optim.lr_g": {"log": [1.0e-3, 3.0e-3]}})
    assert search(other, tiny_classifier, "--check").returncode == 0
    changed = search_file(tmp_path, mnist_root, space={"optim.lr_d": {"log": [1.0e-3, 3.0e-3]}})
    clash = search(changed, tiny_classifier, "--check")
    assert clash.returncode == 2 and "holds study 'tiny' with another space" in clash.stderr

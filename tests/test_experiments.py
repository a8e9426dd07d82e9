"""Sweeps as users run them: `python -m experiments.run FILE key=value` on tiny members end to end, the report's
values against the members' own logs, finished members skipped, an interrupted member resumed, one-line errors
for bad sweep files, and `python -m experiments.report` on plain runs. The SLURM job array runs in
tests/test_readme.py (the README's `sbatch slurm/sweep.sbatch` command)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support import ROOT, TINY, load_ckpt, one_line_error, subprocess_env
from experiments import report as report_cli
from experiments import run as run_cli

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_sweep(tmp_path, classifier, members: list[dict], epochs: int = 2, **extra) -> str:
    """A sweep file of TINY members, evaluated every epoch with the tiny classifier."""
    spec = {"name": "tiny", "base": "configs/mnist32_seed.yaml",   # Adam and a BatchNorm D: what members change
            "overrides": {**dict(o.split("=", 1) for o in TINY), "train.epochs": epochs,
                          "train.checkpoint_every": 8},
            "evaluation": {"every_epochs": 1, "metrics": "clf_fid,coverage,background", "num_samples": 64,
                           "classifier_weights": str(classifier)},
            "members": members, **extra}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def run_sweep(sweep: str, *args: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.run", sweep, *args], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, **popen)


def cli_error(main, args: list[str], capsys) -> str:
    """A CLI's main() run in this process: its one-line error (exit status 2, one 'error: ...' line)."""
    capsys.readouterr()
    status = main(args)
    captured = capsys.readouterr()
    return one_line_error(subprocess.CompletedProcess(args, status, captured.out, captured.err))


# A value the log shows with 4 significant digits (evaluation/during_training.py, "{:.4g}") is within half a unit of
# its last digit, 5e-4 of itself at most; the margin is for float32 (TensorBoard's copy, which the report reads).
LOG_PRECISION = 5.01e-4


def logged_evaluations(run_dir) -> list[dict]:
    """The member's own results: its train.log's evaluation lines."""
    lines = re.findall(r"eval step \d+ after [\d.]+ s of training: (.*?); best", (run_dir / "train.log").read_text())
    return [{name: float(value) for name, value in re.findall(r"(\w+) ([-\d.e+]+)", line)} for line in lines]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, mnist_root, tiny_classifier):
    """Three members run two at a time, as `python -m experiments.run FILE data.root=... train.out_dir=...`."""
    tmp = tmp_path_factory.mktemp("sweep")
    members = [{"name": "adam"}, {"name": "rmsprop", "overrides": {"optim.name": "rmsprop"}},
               {"name": "deeper", "overrides": {"model.g_extra_layers": 1}}]
    path = tiny_sweep(tmp, tiny_classifier, members)
    args = [f"data.root={mnist_root}", f"train.out_dir={tmp / 'runs'}"]
    result = run_sweep(path, *args, "--parallel", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"file": path, "args": args, "folder": tmp / "runs" / "tiny", "output": result.stdout}


def test_sweep_runs_every_member_as_a_run_dir(sweep):
    for name, optimizer, extra in (("adam", "adam", 0), ("rmsprop", "rmsprop", 0), ("deeper", "adam", 1)):
        run_dir = sweep["folder"] / name
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert (config["name"], config["optim"]["name"], config["model"]["g_extra_layers"]) == (name, optimizer, extra)
        assert config["train"]["wandb_group"] == "tiny"
        assert (run_dir / "generator.pt").is_file() and load_ckpt(run_dir)["step"] == 2 * 16
        assert len(logged_evaluations(run_dir)) == 2


def test_report_table_equals_the_members_own_results(sweep):
    folder = sweep["folder"]
    rows = {row["name"]: row for row in json.loads((folder / "report.json").read_text())}
    table = (folder / "report.md").read_text()
    assert set(rows) == {"adam", "rmsprop", "deeper"}
    for name, row in rows.items():
        evaluations = logged_evaluations(folder / name)
        fids = [e["clf_fid"] for e in evaluations]
        # report.json keeps full precision; the log shows 4 significant digits: within half a unit of the last one
        assert row["best"] == pytest.approx(min(fids), rel=LOG_PRECISION)
        assert row["final"] == pytest.approx(fids[-1], rel=LOG_PRECISION)
        assert row["classes_covered"] == evaluations[-1]["classes_covered"]
        assert row["background_gap"] == pytest.approx(evaluations[-1]["background_gap"], rel=LOG_PRECISION)
        assert row["finished"] and row["img_per_s"] > 0 and row["peak_memory_mib"] > 0 and row["train_seconds"] > 0
        assert f"| {name} |" in table and f"{row['best']:.4g}" in table
        assert f"| {row['background_gap']:.3f} |" in table
    # the settings that tell members apart, and only those, are columns
    assert set(rows["rmsprop"]["settings"]) == {"optim.name", "model.g_extra_layers"}
    assert "| background gap |" in table
    for plot in ("losses.png", "d_outputs.png", "quality.png", "samples.png"):
        data = (folder / plot).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, plot
        assert f"({plot})" in table
    # quality against steps and seconds, and the background gap against steps: three panels, each 6 in at 80 dpi
    assert int.from_bytes((folder / "quality.png").read_bytes()[16:20], "big") == 3 * 6 * 80


def test_running_again_skips_finished_members(sweep):
    logs = {p: p.read_bytes() for p in sweep["folder"].glob("*/train.log")}
    # a run made before an option existed ran with the option's default: still the same member
    saved = sorted(sweep["folder"].glob("*/config.yaml"))[0]
    settings = yaml.safe_load(saved.read_text())
    del settings["model"]["d_norm"]
    saved.write_text(yaml.safe_dump(settings))
    # and the data folder spelled another way is the same folder
    root = next(a.split("=", 1)[1] for a in sweep["args"] if a.startswith("data.root="))
    other_spelling = f"data.root={root}/../{Path(root).name}"
    result = run_sweep(sweep["file"], *sweep["args"], other_spelling)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("finished, skipped") == 3
    assert {p: p.read_bytes() for p in logs} == logs


def test_a_member_made_with_other_settings_is_one_line(sweep, capsys):
    message = cli_error(run_cli.main, [sweep["file"], *sweep["args"], "train.epochs=3"], capsys)
    assert "was made with other settings (train.epochs 2 there, 3 here)" in message


def test_a_run_under_a_members_old_name_is_moved_not_run_again(sweep, tmp_path, capsys):
    """Adding seeds to a study names its members <member>-seed<k>: the run made as `adam` is seed 0's, and the
    runner says where to move it instead of training seed 0 again (and the report counting seed 0 twice)."""
    spec = yaml.safe_load(Path(sweep["file"]).read_text())
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**spec, "members": [{"name": "adam"}], "seeds": [0, 1]}, sort_keys=False))
    old, new = sweep["folder"] / "adam", sweep["folder"] / "adam-seed0"
    message = cli_error(run_cli.main, [str(path), *sweep["args"]], capsys)
    assert f"{old} is member adam-seed0's run under an old name: `mv {old} {new}` to keep it" in message
    assert not new.exists()
    shutil.copytree(old, new)  # the move, on a copy: the module's other tests read this folder as it was
    try:
        for member, expected in (("adam-seed0", ""), ("adam-seed1", "train.seed=1")):
            capsys.readouterr()
            assert run_cli.main([str(path), *sweep["args"], "--member", member, "--print-args"]) == 0
            printed = capsys.readouterr().out
            # seed 0 is finished under its new name (its config.yaml still says `adam`); seed 1, which has no run
            # under any name, is not mistaken for it
            assert (expected in printed) if expected else printed == ""
    finally:
        shutil.rmtree(new)


EPOCHS = 16  # of 16 tiny steps: seconds of training, time enough to stop it after its first checkpoint


def test_an_interrupted_member_resumes(tmp_path, mnist_root, tiny_classifier):
    """SIGTERM to the runner and its member (a terminal's Ctrl-C, a kill): the member writes a checkpoint and
    stops, nothing else starts; the same command again resumes it and finishes the sweep."""
    path = tiny_sweep(tmp_path, tiny_classifier, [{"name": "long"}, {"name": "next", "overrides": {"train.epochs": 1}}],
                      epochs=EPOCHS,
                      evaluation={"every_epochs": EPOCHS, "metrics": "clf_fid", "num_samples": 64,
                                  "classifier_weights": str(tiny_classifier)})
    args = [f"data.root={mnist_root}", f"train.out_dir={tmp_path / 'runs'}"]
    folder = tmp_path / "runs" / "tiny"
    runner = subprocess.Popen([sys.executable, "-m", "experiments.run", path, *args], cwd=ROOT, env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not list((folder / "long" / "checkpoints").glob("ckpt-*.pt")):
        assert time.time() < deadline and runner.poll() is None, "the member never wrote a checkpoint"
        time.sleep(0.05)
    os.killpg(runner.pid, signal.SIGTERM)
    output = runner.communicate(timeout=120)[0]
    assert runner.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "run the same command to resume" in output
    assert not (folder / "long" / "generator.pt").exists() and not (folder / "next").exists()
    stopped = load_ckpt(folder / "long")["step"]
    assert stopped < EPOCHS * 16

    result = run_sweep(path, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resumed from {folder / 'long'}/checkpoints/ckpt-{stopped:08d}.pt" in (folder / "long" / "train.log").read_text()
    assert load_ckpt(folder / "long")["step"] == EPOCHS * 16 and (folder / "next" / "generator.pt").is_file()
    assert all(row["finished"] for row in json.loads((folder / "report.json").read_text()))


def test_gpu_suite_study_stage_stops_at_its_time_limit_and_reports(tmp_path, mnist_root, tiny_classifier):
    """`bash bench/gpu_suite.sh study` as a GPU session runs it, on the CPU: the study's members start side by side,
    STUDY_SECONDS stops them as a preemption does (each writes a checkpoint, neither finishes), and the report of
    what they reached lands in $OUT; the stage's status says the study is unfinished."""
    path = tiny_sweep(tmp_path, tiny_classifier, [{"name": "a"}, {"name": "b", "overrides": {"optim.lr_g": 1.0e-4}}],
                      epochs=100000, evaluation={"every_epochs": 0})
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = {**subprocess_env(), "PYTHON": sys.executable, "DATA": str(mnist_root), "INCEPTION": "unused.pth",
           "OUT": str(out), "RUNS": str(runs), "STUDY": path, "STUDY_SECONDS": "30"}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), "study"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 1 and "stopped by signal 15: run the same command to resume" in log, log[-3000:]
    rows = json.loads((out / "report.json").read_text())
    assert [(r["name"], r["finished"]) for r in rows] == [("a", False), ("b", False)]
    for name in ("a", "b"):  # both ran at once: with one at a time, b would not have started
        assert "on SIGTERM: checkpoint written" in (runs / "tiny" / name / "train.log").read_text()
        assert load_ckpt(runs / "tiny" / name)["step"] > 0
    assert (out / "report.md").read_text().count("| no |") == 2 and (out / "samples.png").read_bytes()[:8] == PNG


BAD_SWEEPS = [
    ("base: configs/mnist32.yaml\nmembers: [{name: a}]\nbogus: 1\n", "unknown key 'bogus'"),
    ("base: configs/mnist32.yaml\nmembers: [{name: a, overides: {}}]\n", "members[0]: unknown key 'overides'"),
    ("base: configs/mnist32.yaml\nmembers: [{name: a, overrides: {optim.nam: adam}}]\n",
     "member 'a': unknown key 'optim.nam'"),
    ("base: configs/mnist32.yaml\nmembers: [{name: a, overrides: {train.epochs: many}}]\n",
     "member 'a': train.epochs: expected an integer"),
    ("base: configs/mnist32.yaml\ngrid: {optim.lr_g: 1.0e-4}\n", "grid key optim.lr_g needs a list of values"),
    ("base: configs/mnist32.yaml\nseeds: [0]\n", "no members"),
    ("members: [{name: a}]\n", "base is missing"),
    ("base: configs/nope.yaml\nmembers: [{name: a}]\n", "base config configs/nope.yaml does not exist"),
    ("base: configs/mnist32.yaml\nmembers: [{name: a}, {name: a}]\n", "two members share a name (a)"),
    ("base: configs/mnist32.yaml\nmembers: [{name: a/b}]\n", "member name 'a/b' must be"),
    ("base: configs/mnist32.yaml\nmembers: [{name: a}]\nseeds: [one]\n", "seeds must be a list of integers"),
    ("base: configs/mnist32.yaml\nmembers: [{name: a\n", "not valid YAML"),
    ("base: configs/mnist32.yaml\nmembers: [{name: a}]\nevaluation: {every: 1}\n", "unknown key 'eval.every'"),
]


@pytest.mark.parametrize("text,expected", BAD_SWEEPS, ids=[e for _, e in BAD_SWEEPS])
def test_bad_sweep_file_is_one_line(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert expected in cli_error(run_cli.main, [str(path), "--list"], capsys)


@pytest.mark.parametrize("args,expected", [
    (["configs/experiments/baseline.yaml", "train.epochs=0"], "train.epochs=0 must be at least 1"),
    (["configs/experiments/missing.yaml"], "sweep file configs/experiments/missing.yaml does not exist"),
    (["configs/experiments/baseline.yaml", "--member", "nope"], "has no member 'nope'"),
])
def test_bad_command_line_is_one_line(capsys, args, expected, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert expected in cli_error(run_cli.main, args, capsys)


def test_shipped_studies_list_their_members(capsys, monkeypatch):
    """Every study in configs/experiments/ parses, with the members its report was made from."""
    monkeypatch.chdir(ROOT)
    counts = {}
    for path in sorted((ROOT / "configs" / "experiments").glob("*.yaml")):
        assert run_cli.main([f"configs/experiments/{path.name}", "--list"]) == 0
        counts[path.stem] = len(capsys.readouterr().out.splitlines())
    assert counts == {"baseline": 3, "architecture": 4, "hyperparameters": 16, "precision": 2, "conditional": 3,
                      "recipe": 23, "recipe_finalists": 9, "recipe64": 9,
                      "recipe64_finalists": 8, "recipe64_gpu": 2, "recipe64_longer": 9,
                      "recipe64_r1": 8}


def test_report_reads_runs_made_without_the_runner(tmp_path, mnist_root, capsys):
    from train_ddp import main as train
    for lr in ("1e-4", "3e-4"):
        assert train(["--config", str(ROOT / "configs" / "mnist32.yaml"), *TINY, f"data.root={mnist_root}", "train.max_steps=8",
                      f"optim.lr_g={lr}", f"train.out_dir={tmp_path}"]) == 0
    capsys.readouterr()
    assert report_cli.main([str(tmp_path)]) == 0
    table = (tmp_path / "report.md").read_text()
    assert "| 000-mnist32 | 0.0001 |" in table and "| 001-mnist32 | 0.0003 |" in table
    assert "no runs in" in cli_error(report_cli.main, [str(tmp_path / "000-mnist32")], capsys)

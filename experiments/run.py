"""Run a sweep's members, one ordinary run dir each, then write its report.

    python -m experiments.run configs/experiments/baseline.yaml data.root=../shared/data
    python -m experiments.run configs/experiments/hyperparameters.yaml train.max_steps=30   # a smoke test
    python -m experiments.run configs/experiments/precision.yaml --list

Members run one after another on this machine (on a machine with several GPUs, one per GPU at a time), each as
`train_ddp.py` in runs/<sweep>/<member>/ with train.resume=latest. Running the command again skips finished
members and resumes an interrupted one from its last checkpoint; a member made with other settings is an error
(move it, or set train.out_dir), and so is a member's run left under an old name (adding seeds to a study names its
members <member>-seed<k>): the error names the `mv` that keeps it. slurm/sweep.sbatch runs the same members as a
SLURM job array.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dcgan.config import ConfigError, flatten, recorded_settings
from dcgan.train.data import DataError
from evaluation.common import EvaluationError

from .sweep import REPO, Member, Sweep, SweepError, load_sweep

TRAIN = REPO / "train_ddp.py"
# Settings a member's config.yaml may differ in from its sweep file and still be the same member: where its run
# dir is and what it is called (a run moved to its member's new name keeps its old name in its config.yaml).
RUN_KEYS = {"name", "train.run_dir", "train.resume"}
# Settings that name a file or folder: two spellings of one place (../shared/data, /work/shared/data) are the same.
PATH_KEYS = {"data.root", "train.out_dir", "eval.classifier_weights", "eval.inception_weights"}


def member_args(sweep: Sweep, member: Member) -> list[str]:
    """train_ddp.py's arguments for a member: its config, its overrides, its run dir, resume from the latest."""
    return ["--config", str(sweep.base), *member.overrides, f"train.run_dir={member.run_dir(sweep.name)}",
            "train.resume=latest"]


def finished(sweep: Sweep, member: Member) -> bool:
    """True when the member's run ended (its generator was exported). A run dir made with other settings than
    the member's is a SweepError: resuming or skipping it would mix two experiments (auto precision matches
    what it resolved to)."""
    run_dir = member.run_dir(sweep.name)
    if not (run_dir / "config.yaml").is_file():
        return False
    differing = settings_differing(run_dir, member)
    if differing:
        shown = ", ".join(f"{k} {there} there, {here} here" for k, there, here in differing[:3])
        raise SweepError(f"{run_dir} was made with other settings ({shown}): move it away, or give this sweep "
                         f"another train.out_dir")
    return (run_dir / "generator.pt").is_file()


def settings_differing(run_dir: Path, member: Member) -> list[tuple[str, object, object]]:
    """(key, the run dir's value, the member's) of every setting in which a run dir is not the member's run."""
    recorded = recorded_settings(run_dir / "config.yaml")
    wanted = flatten(member.config.to_dict())
    ignored = RUN_KEYS | ({"train.mixed_precision"} if wanted["train.mixed_precision"] == "auto" else set())
    return [(k, recorded.get(k), wanted[k]) for k in wanted
            if k not in ignored and not same_setting(k, recorded.get(k), wanted[k])]


def check_renamed(sweep: Sweep, members: list[Member]) -> None:
    """A member without a run dir whose run sits in its sweep's folder under a name no member has (the study's
    members were renamed: adding seeds names them <member>-seed<k>) is a SweepError that says where to move it:
    running it again would spend the run's time twice, and the report would count it twice."""
    member_dirs = {m.run_dir(sweep.name) for m in sweep.members}
    for member in members:
        run_dir = member.run_dir(sweep.name)
        if run_dir.exists():
            continue
        for other in sorted(p.parent for p in run_dir.parent.glob("*/config.yaml")):
            if other not in member_dirs and not settings_differing(other, member):
                raise SweepError(f"{other} is member {member.name}'s run under an old name: `mv {other} {run_dir}` "
                                 f"to keep it, or move it out of {run_dir.parent} to run the member again")


def same_setting(key: str, recorded, wanted) -> bool:
    """Whether a run dir's recorded value is the member's (paths compared as the places they name, from here)."""
    if key in PATH_KEYS and recorded and wanted:
        return os.path.realpath(str(recorded)) == os.path.realpath(str(wanted))
    return str(recorded) == str(wanted)


def preflight(member: Member) -> None:
    """What would fail every member (no classifier for the metrics, no data) fails here, once, in one line."""
    from evaluation.during_training import evaluator_for
    evaluator_for(member.config)


class SweepRunner:
    """Runs members as child processes, at most one per slot (a GPU, or the whole machine). SIGTERM or SIGINT
    stops it the way it stops a run: the running members get SIGTERM, write a checkpoint and exit; no new
    member starts; the next `experiments.run` resumes them."""

    def __init__(self, sweep: Sweep, slots: int):
        self.sweep = sweep
        gpus = _gpu_count()
        self.slots = [str(i) for i in range(slots)] if gpus >= slots > 1 else [None] * slots
        self.threads = max(1, (os.cpu_count() or 1) // slots) if gpus < slots and slots > 1 else None
        self.running: dict[int, tuple[Member, subprocess.Popen]] = {}
        self.stop_signal = 0
        self.results: dict[str, int] = {}

    def run(self, members: list[Member]) -> dict[str, int]:
        """{member name: exit status} of the members started."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            pending = list(members)
            while (pending and not self.stop_signal) or self.running:
                for slot in range(len(self.slots)):
                    if slot not in self.running and pending and not self.stop_signal:
                        self._start(slot, pending.pop(0))
                self._reap()
                time.sleep(0.2)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.results

    def _start(self, slot: int, member: Member) -> None:
        env = dict(os.environ)
        if self.slots[slot] is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.slots[slot]
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)  # members side by side on CPUs: no oversubscription
        print(f"[experiments] {self.sweep.name}/{member.name}: starting "
              f"({'train.resume=latest' if member.run_dir(self.sweep.name).exists() else 'new'})", flush=True)
        command = [sys.executable, str(TRAIN), *member_args(self.sweep, member)]
        self.running[slot] = (member, subprocess.Popen(command, env=env))

    def _reap(self) -> None:
        for slot, (member, process) in list(self.running.items()):
            if process.poll() is not None:
                del self.running[slot]
                self.results[member.name] = process.returncode
                print(f"[experiments] {self.sweep.name}/{member.name}: exit status {process.returncode}", flush=True)

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum
        for _, process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)


def _gpu_count() -> int:
    import torch
    return torch.cuda.device_count()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a sweep file, e.g. configs/experiments/baseline.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="for every member, after its own")
    parser.add_argument("--base", help="start every member from this config instead of the file's base "
                        "(e.g. configs/mnist64.yaml: the study at 64 px)")
    parser.add_argument("--member", help="run only this member (a name or an index: a SLURM array task's id)")
    parser.add_argument("--list", action="store_true", help="print the members (index, name, run dir) and exit")
    parser.add_argument("--print-args", action="store_true",
                        help="with --member: print its train_ddp.py arguments, one per line (nothing if finished)")
    parser.add_argument("--parallel", type=int, default=max(1, _gpu_count()),
                        help="members at a time (default: one per GPU; 1 without GPUs)")
    parser.add_argument("--no-report", action="store_true", help="do not write runs/<sweep>/report.md at the end")
    args = parser.parse_intermixed_args(argv)
    try:
        if args.parallel < 1:
            raise SweepError(f"--parallel {args.parallel}: use 1 or more members at a time")
        sweep = load_sweep(args.sweep, args.overrides, args.base)
        members = [sweep.member(args.member)] if args.member is not None else sweep.members
        if args.list:
            for index, member in enumerate(sweep.members):
                print(f"{index}\t{member.name}\t{member.run_dir(sweep.name)}")
            return 0
        done = {m.name for m in members if finished(sweep, m)}
        check_renamed(sweep, [m for m in members if m.name not in done])
        if args.print_args:
            if args.member is None:
                raise SweepError("--print-args needs --member NAME|INDEX")
            if not done:
                print("\n".join(member_args(sweep, members[0])))
            return 0
        todo = [m for m in members if m.name not in done]
        for member in members:
            if member.name in done:
                print(f"[experiments] {sweep.name}/{member.name}: finished, skipped "
                      f"(delete {member.run_dir(sweep.name)} to run it again)")
        if todo:
            preflight(todo[0])
    except (SweepError, ConfigError, DataError, EvaluationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runner = SweepRunner(sweep, min(args.parallel, max(1, len(todo))))
    results = runner.run(todo)
    failed = [name for name, status in results.items() if status != 0]
    if not args.no_report and args.member is None and not runner.stop_signal:
        from .report import write_report
        print(f"[experiments] report: {write_report(Path(sweep.members[0].config.train.out_dir) / sweep.name)}")
    if runner.stop_signal:
        print(f"[experiments] stopped by signal {runner.stop_signal}: run the same command to resume", file=sys.stderr)
        return 128 + runner.stop_signal
    if failed:
        print(f"error: members that did not finish: {', '.join(failed)} (their logs: train.log in their run dirs); "
              f"run the same command to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

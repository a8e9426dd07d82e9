"""Search a recipe with Optuna: trials are ordinary runs, judged by their in-training evaluations, pruned when
they fall behind, on one machine or as many workers sharing one study (pip install -r requirements-search.txt).

    python -m experiments.search configs/search/mnist32.yaml data.root=../shared/data
    python -m experiments.search configs/search/mnist32.yaml --trials 60         # a bigger budget, same study
    python -m experiments.search configs/search/mnist32.yaml --report            # search.md, plots, best.yaml
    sbatch --array=0-7 slurm/search.sbatch configs/search/mnist32.yaml data.root=../shared/data   # 8 workers

Each trial is runs/<search>/trial-NNNN/, a run dir like any other (generate, evaluation.fid, experiments.report and
resume work on it). The study lives in runs/<search>/study.journal (Optuna's journal file: any number of workers
on a shared filesystem, no server), or in the database `--storage URL` names. Running the command again continues
the study: finished trials are kept; a trial whose worker was stopped is re-queued and resumes from its
checkpoint; one whose worker died (no heartbeat for 4 x heartbeat_seconds) is marked failed and re-queued the same
way. The budget counts every trial but those re-queued: `trials: 40` ends with 40 trials complete, pruned or
failed, each with its reason.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

from dcgan.config import ConfigError
from dcgan.train.data import DataError
from evaluation.common import EvaluationError

from .search_space import Search, SearchError, load_search
from .sweep import SweepError
from .trial import HEARTBEAT, Outcome, TrialRun

RESUMES = "resumes"   # a re-queued trial's attribute: the run dir it continues


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise SearchError("searching needs Optuna: pip install -r requirements-search.txt") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(search: Search, storage_url: str | None, worker_number: int):
    """The search's study (made on first use), with its sampler and pruner. A study made with another space or
    objective is an error: its trials would not be comparable."""
    optuna = import_optuna()
    folder = search.folder()
    try:
        if storage_url:
            storage = optuna.storages.RDBStorage(storage_url)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            journal = optuna.storages.journal
            storage = journal.JournalStorage(journal.JournalFileBackend(
                str(folder / "study.journal"), journal.JournalFileOpenLock(str(folder / "study.journal"))))
    except Exception as exc:  # noqa: BLE001 -- every driver has its own errors; the first line says what failed
        where = storage_url or folder / "study.journal"
        raise SearchError(f"storage {where} is unreachable: {str(exc).strip().splitlines()[0][:200]}") from None
    pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
              "hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=search.fixed.train.epochs),
              "none": optuna.pruners.NopPruner()}[search.pruner]
    study = optuna.create_study(study_name=search.name, storage=storage, pruner=pruner,
                                direction="minimize" if search.minimize else "maximize", load_if_exists=True)
    # Seeded by the file, the worker and the trials already there: a worker continuing a study (or beside another)
    # must not draw the random start-up proposals of the one before it again.
    seed = search.seed + worker_number + 1000 * len(study.get_trials(deepcopy=False))
    study.sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, search.trials // 4 or 1))
                     if search.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed))
    recorded = study.user_attrs.get("search")
    if recorded is None:
        study.set_user_attr("search", search.identity())
    elif recorded != search.identity():
        raise SearchError(f"{storage_url or folder} holds study '{search.name}' with another space, objective or "
                          f"settings: name this search differently (name: in the file), or move {folder} away")
    return study


class Worker:
    """Takes trials from the study until its budget is spent, one at a time on this machine. SIGTERM, SIGINT or
    SIGUSR1 stop the running trial with a checkpoint and re-queue it; the next worker resumes it."""

    def __init__(self, search: Search, study, name: str):
        self.search, self.study, self.name = search, study, name
        self.running: TrialRun | None = None
        self.stop_signal = 0

    def run(self, limit: int | None = None) -> int:
        """Trials run until the budget is spent or a signal stops the worker; `limit`: at most this many here."""
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
        previous = {s: signal.signal(s, self._on_signal) for s in signals}
        done = 0
        try:
            while not self.stop_signal and (limit is None or done < limit):
                trial = self.next_trial()
                if trial is None:
                    break
                self.run_trial(trial)
                done += 1
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return done

    def next_trial(self):
        """A trial to run, under the study's lock so that no two workers overshoot the budget: a re-queued one
        first, else a new one while complete, pruned, failed, running and queued trials are fewer than the budget."""
        optuna = import_optuna()
        State = optuna.trial.TrialState
        with StudyLock(self.search.folder() / "study.lock"):
            trials = self.study.get_trials(deepcopy=False)
            self.requeue_stale(trials)
            trials = self.study.get_trials(deepcopy=False)
            counted = [t for t in trials if not t.user_attrs.get("requeued")]
            waiting = [t for t in trials if t.state == State.WAITING]
            if not waiting and len(counted) >= self.search.trials:
                return None
            trial = self.study.ask()
            trial.set_user_attr("worker", self.name)
            trial.set_user_attr(HEARTBEAT, time.time())
            return trial

    def requeue_stale(self, trials) -> None:
        """Running trials whose worker has been silent for 4 heartbeats: failed, with the reason, and re-queued."""
        optuna = import_optuna()
        silent_for = 4 * self.search.heartbeat_seconds
        for t in trials:
            beat = t.user_attrs.get(HEARTBEAT)
            if t.state == optuna.trial.TrialState.RUNNING and beat is not None and time.time() - beat > silent_for:
                reason = (f"its worker {t.user_attrs.get('worker')} stopped (no heartbeat for "
                          f"{time.time() - beat:.0f} s): re-queued to resume from its checkpoint")
                self.fail_and_requeue(t, reason)

    def fail_and_requeue(self, trial, reason: str) -> None:
        """The trial (running, here or on a dead worker) ends as failed with `reason`; a new one with its settings
        continues its run dir."""
        optuna = import_optuna()
        run = trial.user_attrs.get(RESUMES) or trial_dir_name(trial.number)
        for key, value in (("reason", reason), ("requeued", True)):
            self.study._storage.set_trial_user_attr(trial._trial_id, key, value)
        self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        self.study.enqueue_trial(trial.params, user_attrs={RESUMES: run})

    def run_trial(self, trial) -> Outcome:
        optuna = import_optuna()
        overrides, chosen = self.search.trial_settings(trial)
        run_name = trial.user_attrs.get(RESUMES) or trial_dir_name(trial.number)
        overrides = ["--config", str(self.search.base), *overrides, f"name={self.search.name}-{run_name}",
                     f"train.wandb_group={self.search.name}"]
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())
        print(f"[search] trial {trial.number} ({run_name}{', resumed' if trial.user_attrs.get(RESUMES) else ''}) "
              f"on {self.name}: {shown}", flush=True)
        trial.set_user_attr("run", run_name)
        self.running = TrialRun(trial, self.search.folder() / run_name, overrides, self.search.metric,
                                self.search.heartbeat_seconds)
        if self.stop_signal:
            self.running.stop()
        outcome = self.running.run()
        self.running = None
        if outcome.train_seconds is not None:
            trial.set_user_attr("train_seconds", outcome.train_seconds)
        if outcome.reason:
            trial.set_user_attr("reason", outcome.reason)
        if outcome.state == "interrupted":
            with StudyLock(self.search.folder() / "study.lock"):
                self.fail_and_requeue(trial, outcome.reason)
        else:
            state = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
                     "failed": optuna.trial.TrialState.FAIL}[outcome.state]
            self.study.tell(trial, outcome.value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        value = f" {self.search.metric} {outcome.value:.4g}" if outcome.value is not None else ""
        print(f"[search] trial {trial.number}: {outcome.state}{value}{f' ({outcome.reason})' if outcome.reason else ''}",
              flush=True)
        return outcome

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum
        if self.running is not None:
            self.running.stop()


class StudyLock:
    """The study's budget lock: a file made with O_EXCL (safe on NFS, as Optuna's journal lock), held for the
    moment it takes to count the trials and ask for one."""

    def __init__(self, path: Path):
        optuna = import_optuna()
        self.lock = optuna.storages.journal.JournalFileOpenLock(str(path))

    def __enter__(self):
        self.lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


def trial_dir_name(number: int) -> str:
    return f"trial-{number:04d}"


def worker_name() -> str:
    """<node>/<SLURM array task> or <host>/<process id>: recorded on each trial it runs."""
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{node}/slurm-{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return f"{node}/{os.getpid()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("search", help="a search file, e.g. configs/search/mnist32.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="for every trial, after the file's settings")
    parser.add_argument("--trials", type=int, help="the study's trial budget (default: the file's trials)")
    parser.add_argument("--storage", help="an Optuna RDB URL (e.g. postgresql://...) instead of the journal file")
    parser.add_argument("--report", action="store_true", help="write runs/<search>/search.md and best.yaml, and exit")
    parser.add_argument("--max-trials-here", type=int, help="this worker runs at most this many trials")
    parser.add_argument("--check", action="store_true", help="check the file, data, judge and storage, and exit")
    args = parser.parse_intermixed_args(argv)
    try:
        search = load_search(args.search, args.overrides)
        if args.trials is not None:
            if args.trials < 1:
                raise SearchError(f"--trials {args.trials}: give 1 or more")
            search.trials = args.trials
        worker_number = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0)
        study = open_study(search, args.storage, worker_number)
        if args.report:
            from .search_report import write_search_report
            print(write_search_report(search, study))
            return 0
        from evaluation.during_training import evaluator_for
        evaluator_for(search.fixed)   # no judge or no data fails here, once, not in every trial
        if args.check:
            print(f"[search] {search.name}: {len(search.space)} keys searched, {search.trials} trials, the study in "
                  f"{args.storage or search.folder() / 'study.journal'} holds {len(study.get_trials(deepcopy=False))}")
            return 0
    except (SweepError, ConfigError, DataError, EvaluationError) as exc:  # SearchError is a SweepError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    worker = Worker(search, study, worker_name())
    done = worker.run(args.max_trials_here)
    if worker.stop_signal:
        print(f"[search] stopped by signal {worker.stop_signal} after {done} trial(s): run the same command to go on",
              file=sys.stderr)
        return 128 + worker.stop_signal
    print(f"[search] {search.name}: {done} trial(s) run here; the study holds "
          f"{len(study.get_trials(deepcopy=False))}: python -m experiments.search {args.search} --report", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

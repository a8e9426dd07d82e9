"""Search files: an Optuna search as data. A base config, fixed settings, a space over dotted keys, the
objective, the sampler and pruner, the trial budget; `python -m experiments.search` runs it.

    name: mnist32                    # runs/<name>/trial-NNNN/ (default: the file's name)
    base: configs/mnist32.yaml       # relative to the working directory or the repository root
    settings: {train.epochs: 6}      # for every trial; the command line's key=value come after (one naming a
                                     # searched key fixes it: the search goes on over the others)
    evaluation: {every_epochs: 1, metrics: "clf_fid,coverage,background", num_samples: 2000}
    space:
      optim.lr_g: {log: [1.0e-4, 3.0e-3]}           # log-uniform float
      optim.beta1: {uniform: [0.0, 0.9], when: {optim.name: adam}}   # only where optim.name is adam
      loss.r1_every: {int: [1, 16]}                  # integer, both ends included
      loss.name: [bce, hinge]                        # categorical
    objective: {metric: clf_fid, direction: minimize}   # the trial's last in-training evaluation
    sampler: tpe                     # tpe | random
    pruner: median                   # median | hyperband | none: stop trials behind the others at an evaluation
    trials: 40                       # in the study, over all workers (--trials N changes it)
    seed: 0                          # the sampler's (each worker adds its own number)
    heartbeat_seconds: 30            # a running trial whose worker is silent 4x this long is failed and re-queued

Every setting a trial may get is checked when the file is read: an unknown key, an empty or inverted range, a
value the config rejects and an objective the evaluation does not measure are one line before anything trains.
A `when` names a key of the settings or one searched before it.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

from dcgan.config import Config, ConfigError, load_config
from evaluation.registry import LOWER_IS_BETTER, reported_values

from .sweep import SweepError, _base, _overrides, _text, read_study_file

SEARCH_KEYS = ("name", "base", "settings", "evaluation", "space", "objective", "sampler", "pruner", "trials", "seed",
               "heartbeat_seconds")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
RANGES = ("log", "uniform", "int")


class SearchError(SweepError):
    """A mistake in a search file, its command line or its storage; the message is one line."""


@dataclass(frozen=True)
class Dimension:
    """One searched key: a range (kind log | uniform | int, low < high) or a list of choices (kind choice)."""
    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()   # (key, accepted values): searched only where each key has one

    def applies(self, settings: dict) -> bool:
        return all(_text(settings.get(key)) in {_text(v) for v in accepted} for key, accepted in self.when)

    def suggest(self, trial):
        """This dimension's value for an Optuna trial (fixed where the trial was enqueued with it)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high)
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")

    def extremes(self) -> list:
        """The values that bound what a trial may get: every choice, or both ends of the range."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


@dataclass
class Search:
    name: str
    base: Path
    settings: list[str]               # key=value for every trial: the file's settings and evaluation, the command line's
    space: list[Dimension]
    metric: str
    minimize: bool
    sampler: str = "tpe"
    pruner: str = "median"
    trials: int = 40
    seed: int = 0
    heartbeat_seconds: float = 30.0
    fixed: Config = field(default=None, repr=False)   # the base with the settings: what a trial starts from

    def folder(self) -> Path:
        return Path(self.fixed.train.out_dir) / self.name

    def trial_settings(self, trial) -> tuple[list[str], dict]:
        """(key=value overrides, {key: value}) of an Optuna trial: each dimension that applies, in the file's order."""
        values = self.fixed.flat()
        chosen = {}
        for dim in self.space:
            if dim.applies(values):
                chosen[dim.key] = values[dim.key] = dim.suggest(trial)
        return [*self.settings, *(f"{k}={_text(v)}" for k, v in chosen.items())], chosen

    def identity(self) -> dict:
        """What makes two runs of the command the same study (the trial budget may change)."""
        return {"base": self.base.name, "settings": self.settings, "metric": self.metric, "minimize": self.minimize,
                "space": [[d.key, d.kind, d.low, d.high, [_text(c) for c in d.choices],
                           [[k, [_text(v) for v in vs]] for k, vs in d.when]] for d in self.space]}


def load_search(path: str | Path, cli_overrides: list[str] | tuple = ()) -> Search:
    path = Path(path)
    spec, name = read_study_file(path, SEARCH_KEYS, "search file", "configs/search/", SearchError)
    where = str(path)
    base = _base(spec.get("base"), where)
    settings = [*_overrides(spec.get("settings"), f"{where}: settings"),
                *_overrides(spec.get("evaluation"), f"{where}: evaluation", prefix="eval."), *cli_overrides]
    try:
        fixed = load_config(base, settings)
    except ConfigError as exc:
        raise SearchError(f"{where}: {exc}") from None
    # A key the command line sets is fixed for this search (a smaller study: its own name); one the file both
    # searches and sets is a mistake.
    fixed_here = {text.split("=", 1)[0].strip() for text in cli_overrides}
    space = [d for d in _space(spec.get("space"), where, fixed) if d.key not in fixed_here]
    in_file = {text.split("=", 1)[0].strip() for text in settings[:len(settings) - len(cli_overrides)]}
    for dim in space:
        if dim.key in in_file:
            raise SearchError(f"{where}: {dim.key} is both searched and set in settings or evaluation: remove one")
    metric, minimize = _objective(spec.get("objective"), where, fixed)
    search = Search(name, base, settings, space, metric, minimize, fixed=fixed,
                    sampler=_choice(spec, "sampler", SAMPLERS, where), pruner=_choice(spec, "pruner", PRUNERS, where),
                    trials=_count(spec, "trials", 40, where), seed=_count(spec, "seed", 0, where, minimum=0),
                    heartbeat_seconds=float(_count(spec, "heartbeat_seconds", 30, where)))
    _check_values(search, where)
    return search


def _space(space, where: str, fixed: Config) -> list[Dimension]:
    if not isinstance(space, dict) or not space:
        raise SearchError(f"{where}: space must map dotted keys to ranges or lists, e.g. optim.lr_g: {{log: [1.0e-4, "
                          f"3.0e-3]}}")
    known = fixed.flat()
    dims: list[Dimension] = []
    for key, spec in space.items():
        key = str(key)
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise SearchError(f"{where}: space: unknown key '{key}'{f' (did you mean {close[0]}?)' if close else ''}")
        dims.append(_dimension(key, spec, f"{where}: space: {key}", known, [d.key for d in dims]))
    return dims


def _dimension(key: str, spec, where: str, known: dict, earlier: list[str]) -> Dimension:
    when = ()
    if isinstance(spec, dict) and "when" in spec:
        spec = dict(spec)
        condition = spec.pop("when")
        if not isinstance(condition, dict) or not condition:
            raise SearchError(f"{where}: when must map keys to a value or a list, e.g. {{optim.name: adam}}")
        for other in condition:
            if other not in known:
                raise SearchError(f"{where}: when: unknown key '{other}'")
        when = tuple((str(k), tuple(v) if isinstance(v, list) else (v,)) for k, v in condition.items())
    if isinstance(spec, list):
        if not spec or any(isinstance(v, (dict, list)) for v in spec):
            raise SearchError(f"{where}: a list of choices needs at least one plain value, got {spec!r}")
        return Dimension(key, "choice", choices=tuple(spec), when=when)
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in RANGES:
        raise SearchError(f"{where}: write a list of choices or one of {{log: [low, high]}}, {{uniform: [low, high]}}, "
                          f"{{int: [low, high]}} (optionally with when:), not {spec!r}")
    kind, bounds = next(iter(spec.items()))
    if (not isinstance(bounds, list) or len(bounds) != 2 or
            not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)):
        raise SearchError(f"{where}: {kind} needs [low, high], two numbers, not {bounds!r}")
    low, high = bounds
    if not low < high:
        raise SearchError(f"{where}: {kind} [{low}, {high}] is an empty or inverted range: write [low, high] with "
                          f"low < high")
    if kind == "log" and low <= 0:
        raise SearchError(f"{where}: log [{low}, {high}] needs low > 0")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SearchError(f"{where}: int [{low}, {high}] needs whole numbers")
    cast = int if kind == "int" else float
    return Dimension(key, kind, cast(low), cast(high), when=when)


def _objective(spec, where: str, fixed: Config) -> tuple[str, bool]:
    if not isinstance(spec, dict) or set(spec) - {"metric", "direction"} or "metric" not in spec:
        raise SearchError(f"{where}: objective must be {{metric: NAME, direction: minimize|maximize}}")
    metric = str(spec["metric"])
    if not fixed.eval.every_epochs:
        raise SearchError(f"{where}: the objective is read from in-training evaluations: set evaluation: "
                          f"{{every_epochs: 1}} (or more)")
    produced = reported_values([m.strip() for m in fixed.eval.metrics.split(",") if m.strip()])
    if metric not in produced:
        raise SearchError(f"{where}: objective metric '{metric}' is not measured by eval.metrics={fixed.eval.metrics}: "
                          f"use one of {', '.join(produced)}, or add its metric to the evaluation")
    direction = str(spec.get("direction", "minimize" if metric in LOWER_IS_BETTER else "maximize"))
    if direction not in ("minimize", "maximize"):
        raise SearchError(f"{where}: objective direction '{direction}': minimize or maximize")
    return metric, direction == "minimize"


def _choice(spec: dict, key: str, allowed: tuple[str, ...], where: str) -> str:
    value = str(spec.get(key, allowed[0]))
    if value not in allowed:
        raise SearchError(f"{where}: {key} '{value}': choose from {', '.join(allowed)}")
    return value


def _count(spec: dict, key: str, default: int, where: str, minimum: int = 1) -> int:
    value = spec.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SearchError(f"{where}: {key} must be a whole number >= {minimum}, not {value!r}")
    return value


def _check_values(search: Search, where: str) -> None:
    """Every choice and both ends of every range, each on the base with the settings, built and validated: a
    value the config rejects fails here, not in trial 17. A `when` must name a setting or an earlier key."""
    for index, dim in enumerate(search.space):
        for other, _ in dim.when:
            if other in [d.key for d in search.space[index:]]:
                raise SearchError(f"{where}: space: {dim.key}: when names {other}, searched after it: move {other} "
                                  f"above {dim.key}")
        for value in dim.extremes():
            try:
                load_config(search.base, [*search.settings, *_context(search, dim), f"{dim.key}={_text(value)}"])
            except ConfigError as exc:
                raise SearchError(f"{where}: space: {dim.key}: value {_text(value)} is rejected: {exc}") from None


def _context(search: Search, dim: Dimension) -> list[str]:
    """The settings a conditional dimension's values are checked in: its `when` keys at their first accepted value."""
    return [f"{key}={_text(accepted[0])}" for key, accepted in dim.when]

"""Sweep files: a study as data. A base config, named members and/or a grid of dotted overrides, repeats over
seeds, and the evaluation every member runs with; each member becomes one ordinary run dir.

    name: hyperparameters            # runs/<name>/<member>/ (default: the file's name)
    base: configs/mnist32.yaml       # relative to the working directory or the repository root
    overrides: {train.epochs: 3}     # for every member
    evaluation: {every_epochs: 1, metrics: "clf_fid,coverage", num_samples: 2000, target: 0}
    members:                         # named members, each with its own overrides
      - {name: adam, overrides: {optim.name: adam}}
      - {name: rmsprop, overrides: {optim.name: rmsprop}}
    grid:                            # every combination, with each member (or alone); a key may name several
      optim.lr_g,optim.lr_d: [1.0e-4, 2.0e-4]   # dotted keys that take the same value
    seeds: [0, 1, 2]                 # train.seed; members are named <member>-seed<k> when there are several

A member's overrides apply in this order: the sweep's, the evaluation's, the member's, the grid's, its seed, then
the command line's (so `train.max_steps=30` smoke-tests any study). Every member's config is built and validated
when the file is read: a mistake in any member is one line before anything runs.
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dcgan.config import Config, ConfigError, load_config, read_yaml

REPO = Path(__file__).resolve().parent.parent
SWEEP_KEYS = ("name", "base", "overrides", "evaluation", "members", "grid", "seeds")
MEMBER_KEYS = ("name", "overrides")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


class SweepError(ValueError):
    """A mistake in a sweep file or in the command line's overrides; the message is one line."""


@dataclass
class Member:
    name: str
    overrides: list[str]          # key=value, in the order they apply (the base config's file comes first)
    config: Config                # the validated result, without the run-dir settings the runner adds

    def run_dir(self, sweep_name: str) -> Path:
        return Path(self.config.train.out_dir) / sweep_name / self.name


@dataclass
class Sweep:
    name: str
    base: Path
    members: list[Member] = field(default_factory=list)

    def member(self, key: str) -> Member:
        """A member by name or by its index (a SLURM array task's id)."""
        for index, member in enumerate(self.members):
            if key in (member.name, str(index)):
                return member
        raise SweepError(f"sweep '{self.name}' has no member '{key}': its members are "
                         f"{', '.join(m.name for m in self.members)} (or their indices 0-{len(self.members) - 1})")


def load_sweep(path: str | Path, cli_overrides: list[str] | tuple = (), base: str | None = None) -> Sweep:
    """`base` replaces the file's base config (the same study at 64 px: configs/mnist64.yaml)."""
    path = Path(path)
    spec, name = read_study_file(path, SWEEP_KEYS, "sweep file", "configs/experiments/")
    where = f"{path}"
    base = _base(base or spec.get("base"), where)
    shared = _overrides(spec.get("overrides"), f"{where}: overrides")
    shared += _overrides(spec.get("evaluation"), f"{where}: evaluation", prefix="eval.")
    sweep = Sweep(name, base)
    for member_name, overrides in _expand(spec, where):
        # the member's name on its run; its sweep's name as its W&B group (train.trackers=tensorboard,wandb)
        full = [*shared, *overrides, f"name={member_name}", f"train.wandb_group={name}", *cli_overrides]
        try:
            config = load_config(base, full)
        except ConfigError as exc:
            raise SweepError(f"{where}: member '{member_name}': {exc}") from None
        sweep.members.append(Member(member_name, full, config))
    names = [m.name for m in sweep.members]
    for bad in (n for n in names if not _SAFE_NAME.match(n)):
        raise SweepError(f"{where}: member name '{bad}' must be letters, digits and . + - _ (it names a folder)")
    if len(set(names)) != len(names):
        raise SweepError(f"{where}: two members share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
    return sweep


def read_study_file(path: Path, allowed: tuple[str, ...], what: str, shipped: str,
                    error: type[SweepError] = SweepError) -> tuple[dict, str]:
    """A study file (sweep or search) as (its mapping, its name: the file's name unless it says): a missing file,
    bad YAML, an unknown key or a name that cannot name a folder raise `error` with one line."""
    if not path.is_file():
        raise error(f"{what} {path} does not exist (shipped ones are in {shipped})")
    try:
        spec = read_yaml(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise error(f"{path}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    try:
        _mapping(spec, str(path), allowed)
    except SweepError as exc:
        raise error(str(exc)) from None
    name = str(spec.get("name") or path.stem)
    if not _SAFE_NAME.match(name):
        raise error(f"{path}: name '{name}' must be letters, digits and . + - _ (it names a folder)")
    return spec, name


def _expand(spec: dict, where: str) -> list[tuple[str, list[str]]]:
    """(name, overrides) of every member: named members x grid combinations x seeds."""
    named = spec.get("members") or []
    if not isinstance(named, list):
        raise SweepError(f"{where}: members must be a list of {{name, overrides}}")
    members = []
    for i, item in enumerate(named):
        _mapping(item, f"{where}: members[{i}]", MEMBER_KEYS)
        if not item.get("name"):
            raise SweepError(f"{where}: members[{i}] has no name")
        members.append((str(item["name"]), _overrides(item.get("overrides"), f"{where}: member '{item['name']}'")))
    combos = _grid(spec.get("grid"), where)
    if not members and not combos:
        raise SweepError(f"{where}: no members: give members, a grid, or both")
    members = [(m_name if not c_name else f"{m_name}_{c_name}" if m_name else c_name, m_over + c_over)
               for (m_name, m_over), (c_name, c_over) in itertools.product(members or [("", [])], combos or [("", [])])]
    seeds = spec.get("seeds")
    if seeds is None:
        return members
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"{where}: seeds must be a list of integers, e.g. [0, 1, 2]")
    if len(seeds) == 1:
        return [(name, [*over, f"train.seed={seeds[0]}"]) for name, over in members]
    return [(f"{name}-seed{seed}", [*over, f"train.seed={seed}"]) for name, over in members for seed in seeds]


def _grid(grid, where: str) -> list[tuple[str, list[str]]]:
    if grid is None:
        return []
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"{where}: grid must map dotted keys to lists of values, e.g. optim.lr_g: [1.0e-4, 2.0e-4]")
    axes = []
    for keys, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: grid key {keys} needs a list of values, got {values!r}")
        names = [k.strip() for k in str(keys).split(",")]
        label = _label([k.rsplit(".", 1)[-1] for k in names])
        axes.append([(_text(v) if isinstance(v, str) else f"{label}{_text(v)}", [f"{k}={_text(v)}" for k in names])
                     for v in values])
    return [("_".join(n for n, _ in combo), [o for _, over in combo for o in over]) for combo in itertools.product(*axes)]


def _label(leaves: list[str]) -> str:
    """A grid axis's part of member names: the key's last part (batch_size64), the shared start of several keys
    (optim.lr_g,optim.lr_d -> lr0.0002); a text value stands for itself (adam)."""
    if len(leaves) == 1:
        return leaves[0]
    shared = os.path.commonprefix(leaves).rstrip("_")
    return shared or "+".join(leaves)


def _base(value, where: str) -> Path:
    if not value:
        raise SweepError(f"{where}: base is missing: name the config every member starts from, e.g. configs/mnist32.yaml")
    base = Path(str(value))
    if not base.is_absolute() and not base.is_file():
        base = REPO / base
    if not base.is_file():
        raise SweepError(f"{where}: base config {value} does not exist")
    return base


def _overrides(values, where: str, prefix: str = "") -> list[str]:
    if values is None:
        return []
    if not isinstance(values, dict):
        raise SweepError(f"{where}: expected a mapping of dotted keys to values, e.g. {{train.epochs: 3}}")
    out = []
    for key, value in values.items():
        if isinstance(value, (dict, list)):
            raise SweepError(f"{where}: {prefix}{key} must be a single value, got {value!r}")
        out.append(f"{prefix}{key}={_text(value)}")
    return out


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else "" if value is None else str(value)


def _mapping(value, where: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise SweepError(f"{where}: expected a mapping with keys {', '.join(allowed)}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise SweepError(f"{where}: unknown key '{unknown[0]}': allowed are {', '.join(allowed)}")

"""A sweep's report: one table of its members and plots of them overlaid, from what every run already writes.

    python -m experiments.report runs/hyperparameters            # -> runs/hyperparameters/report.md and PNGs
    python -m experiments.report runs/ --target 20                # any folder of run dirs, with a quality target

A member is any folder holding a run's config.yaml: the report reads its TensorBoard events (losses, D outputs,
img/s, peak memory, evaluations, seconds of training), its newest EMA sample grid and whether it finished, so it
works on runs made without the sweep runner too. report.json holds the table's values.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dcgan.machinery.checkpoint import atomic_write
from dcgan.machinery.run_log import read_scalars
from dcgan.config import recorded_settings
from evaluation.registry import LOWER_IS_BETTER, VALUES

# Settings that differ between members without being part of the experiment.
NOT_SETTINGS = {"name", "train.run_dir", "train.out_dir", "train.resume"}
SEED_SUFFIX = re.compile(r"-seed\d+$")


class ReportError(ValueError):
    """Nothing to report on; the message is one line."""


@dataclass
class MemberRun:
    """One run dir's results, as the report's table shows them."""
    name: str
    settings: dict                       # the config, flattened (train.epochs: 30, ...)
    finished: bool
    metric: str                          # eval.best_metric
    best: float | None = None
    final: float | None = None
    last: dict = field(default_factory=dict)  # the last value of each metric value it logged (eval/<name>)
    img_per_s: float | None = None       # median over the run's log windows
    peak_memory_mib: float | None = None
    train_seconds: float | None = None
    seconds_to_target: float | None = None
    curves: dict = field(default_factory=dict, repr=False)  # tag -> ([steps], [values])
    grid: str | None = None              # the newest EMA sample grid


def read_member(run_dir: Path, target: float | None) -> MemberRun:
    settings = recorded_settings(run_dir / "config.yaml")
    curves = read_scalars(run_dir / "tensorboard")
    metric = str(settings.get("eval.best_metric", "clf_fid"))
    run = MemberRun(run_dir.name, settings, (run_dir / "generator.pt").is_file(), metric, curves=curves)
    quality = curves.get(f"eval/{metric}", ([], []))[1]
    if quality:
        run.best = min(quality) if metric in LOWER_IS_BETTER else max(quality)
        run.final = quality[-1]
    run.last = {name: _last(curves[f"eval/{name}"]) for name in VALUES if f"eval/{name}" in curves}
    rates = curves.get("perf/img_per_s", ([], []))[1]
    run.img_per_s = statistics.median(rates) if rates else None
    memory = curves.get("perf/peak_memory_mib", ([], []))[1]
    run.peak_memory_mib = max(memory) if memory else None
    run.train_seconds = _last(curves.get("time/train_seconds"))
    target = target if target is not None else float(settings.get("eval.target") or 0) or None
    if target is not None and quality:
        run.seconds_to_target = _seconds_to(curves, metric, target)
    grids = sorted((run_dir / "samples").glob("samples_ema-*.png"))
    run.grid = str(grids[-1]) if grids else None
    return run


def _seconds_to(curves: dict, metric: str, target: float) -> float | None:
    steps, values = curves[f"eval/{metric}"]
    seconds = dict(zip(*curves.get("time/train_seconds", ([], []))))
    for step, value in zip(steps, values):
        if (value <= target) if metric in LOWER_IS_BETTER else (value >= target):
            return seconds.get(step)
    return None


def _last(curve) -> float | None:
    return curve[1][-1] if curve and curve[1] else None


# ---- the report ---------------------------------------------------------------------------------------------

def find_members(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.glob("*/config.yaml"))


def differing_settings(runs: list[MemberRun]) -> list[str]:
    """The settings that tell the members apart (every key whose value is not the same in all of them)."""
    keys = sorted({k for r in runs for k in r.settings} - NOT_SETTINGS)
    return [k for k in keys if len({str(r.settings.get(k)) for r in runs}) > 1]


def write_report(folder: str | Path, target: float | None = None) -> Path:
    """report.md, report.json and the PNGs it shows, in `folder`; returns report.md's path."""
    folder = Path(folder)
    members = find_members(folder)
    if not members:
        raise ReportError(f"no runs in {folder}: a run dir holds a config.yaml (python -m experiments.run makes them)")
    runs = [read_member(m, target) for m in members]
    keys = differing_settings(runs)
    plots = write_plots(folder, runs)
    lines = [f"# {folder.name}: {len(runs)} runs", "",
             f"Made by `python -m experiments.report {folder}` from the runs' TensorBoard events, config.yaml and "
             f"sample grids. Quality: **{runs[0].metric}** of the EMA generator "
             f"({runs[0].settings.get('eval.num_samples')} samples vs MNIST {runs[0].settings.get('eval.reference')}, "
             f"every {runs[0].settings.get('eval.every_epochs')} epoch(s)); img/s is the median over log windows; peak MiB is "
             f"the process's resident memory on a CPU, CUDA allocations on a GPU.", "",
             *member_table(runs, keys), ""]
    groups = seed_groups(runs)
    if any(len(g) > 1 for g in groups.values()):
        lines += ["## Over seeds (mean ± sd)", "", *group_table(groups), ""]
    lines += [f"![{title}]({name})\n" for title, name in plots]
    atomic_write(folder / "report.md", "\n".join(lines).encode())
    table = [{k: v for k, v in asdict(r).items() if k not in ("curves", "settings", "grid", "last")} | r.last
             | {"settings": {k: r.settings.get(k) for k in keys}} for r in runs]
    atomic_write(folder / "report.json", json.dumps(table, indent=1).encode())
    return folder / "report.md"


def member_table(runs: list[MemberRun], keys: list[str]) -> list[str]:
    metric = runs[0].metric
    columns = logged_values(runs, lambda value: value.column)  # the registry's report columns some member logged
    head = ["run", *keys, f"best {metric}", f"final {metric}", *(v.column for v in columns), "img/s", "peak MiB",
            "train s", "s to target", "finished"]
    rows = [[r.name, *(str(r.settings.get(k)) for k in keys), _fmt(r.best), _fmt(r.final),
             *(_fmt(r.last.get(v.name), v.decimals) for v in columns), _fmt(r.img_per_s, 0), _fmt(r.peak_memory_mib, 0), _fmt(r.train_seconds, 1), _fmt(r.seconds_to_target, 0),
             "yes" if r.finished else "no"] for r in runs]
    return _markdown(head, rows)


def logged_values(runs: list[MemberRun], wanted) -> list:
    """The registry's values (evaluation/registry.py) for which `wanted(value)` holds and some member logged."""
    return [v for v in VALUES.values() if wanted(v) and any(v.name in r.last for r in runs)]


def seed_groups(runs: list[MemberRun]) -> dict[str, list[MemberRun]]:
    groups: dict[str, list[MemberRun]] = {}
    for run in runs:
        groups.setdefault(SEED_SUFFIX.sub("", run.name), []).append(run)
    return groups


def group_table(groups: dict[str, list[MemberRun]]) -> list[str]:
    metric = next(iter(groups.values()))[0].metric
    rows = [[name, str(len(g)), _spread([r.best for r in g]), _spread([r.final for r in g]),
             _spread([r.img_per_s for r in g], 0)] for name, g in groups.items()]
    return _markdown(["setting", "seeds", f"best {metric}", f"final {metric}", "img/s"], rows)


def _spread(values: list, digits: int | None = None) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{_fmt(statistics.mean(values), digits)} ± {_fmt(sd, digits)}"


def _fmt(value, digits: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if digits is not None else f"{value:.4g}"


def _markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


# ---- plots --------------------------------------------------------------------------------------------------

PANELS = {  # file -> (title, [(tag, y label, x axis)])
    "losses.png": ("Losses", [("loss/D", "loss_D", "step"), ("loss/G", "loss_G", "step")]),
    "d_outputs.png": ("D outputs", [("D(x)", "D(x)", "step"), ("D(G(z))", "D(G(z))", "step")]),
    "quality.png": ("Quality", [("eval/{metric}", "{metric}", "step"), ("eval/{metric}", "{metric}", "seconds")]),
}


def write_plots(folder: Path, runs: list[MemberRun]) -> list[tuple[str, str]]:
    """(title, file name) of every plot written: curves of all members overlaid, and their sample grids."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for name, (title, panels) in PANELS.items():
        if name == "quality.png":  # and a panel for each value whose curve tells more than its last value
            panels = [*panels, *((f"eval/{v.name}", v.column, "step") for v in logged_values(runs, lambda v: v.plot))]
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
        for ax, (tag, label, x_axis) in zip(axes[0], panels):
            tag = tag.format(metric=runs[0].metric)
            _plot_panel(ax, runs, tag, x_axis)
            ax.set_ylabel(label.format(metric=runs[0].metric))
            ax.set_xlabel("step" if x_axis == "step" else "seconds of training")
            if tag.startswith("eval/") and _all_positive(runs, tag):
                ax.set_yscale("log")  # FIDs fall by orders of magnitude in a run: the late gaps matter too
        axes[0][0].legend(fontsize="small")
        fig.suptitle(title)
        fig.tight_layout()
        _save(fig, folder / name)
        plt.close(fig)
        written.append((title, name))
    with_grids = [r for r in runs if r.grid]
    if with_grids:
        written.append(("Final EMA samples", _sample_grids(folder, with_grids, plt)))
    return written


def _all_positive(runs: list[MemberRun], tag: str) -> bool:
    values = [v for run in runs for v in run.curves.get(tag, ([], []))[1]]
    return bool(values) and min(values) > 0


def _plot_panel(ax, runs: list[MemberRun], tag: str, x_axis: str) -> None:
    for run in runs:
        steps, values = run.curves.get(tag, ([], []))
        if x_axis == "seconds":
            seconds = dict(zip(*run.curves.get("time/train_seconds", ([], []))))
            pairs = [(seconds[s], v) for s, v in zip(steps, values) if s in seconds]
            steps, values = [x for x, _ in pairs], [v for _, v in pairs]
        ax.plot(steps, values, marker="o" if tag.startswith("eval/") else None, markersize=3, label=run.name)
    ax.grid(alpha=0.3)


def _sample_grids(folder: Path, runs: list[MemberRun], plt) -> str:
    columns = min(4, len(runs))
    rows = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, run in zip(axes.flat, runs):
        ax.imshow(plt.imread(run.grid))
        ax.set_title(run.name, fontsize="small")
    fig.tight_layout()
    _save(fig, folder / "samples.png")
    plt.close(fig)
    return "samples.png"


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    atomic_write(path, buffer.getbuffer())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a sweep's folder (runs/<sweep>) or any folder of run dirs")
    parser.add_argument("--target", type=float, default=None,
                        help="quality target for 'seconds to target' (default: each run's eval.target, if set)")
    args = parser.parse_intermixed_args(argv)
    try:
        print(write_report(args.folder, args.target))
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

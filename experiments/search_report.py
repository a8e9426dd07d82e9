"""A search's report: what the study found, from the study and the trials' run dirs.

    python -m experiments.search configs/search/mnist32.yaml --report   # -> runs/<search>/search.md, best.yaml

search.md: the trials by state, the best trials (settings, objective, seconds of training, classes, background),
every pruned or failed trial with its reason, Optuna's plots (optimization history, parameter importances,
parallel coordinates, slices), and the best trials' quality-vs-seconds curves and sample grids (experiments.report's
plots). best.yaml: the best trial's settings as a config that `train_ddp.py --config` trains as is.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import yaml

from dcgan.config import load_config
from dcgan.machinery.checkpoint import atomic_write

from .report import _fmt, _markdown, read_member, write_plots
from .search_space import Search

BEST_SHOWN = 10      # rows of the best-trials table
CURVES_SHOWN = 5     # best trials whose curves and grids are drawn
BEST_PLOTS = "best-trials"   # their plots' folder (report.md and its plots are experiments.report's, of all trials)


def write_search_report(search: Search, study) -> Path:
    import optuna
    State = optuna.trial.TrialState
    folder = search.folder()
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == State.COMPLETE]
    best = sorted(complete, key=lambda t: t.value, reverse=not search.minimize)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in State}
    requeued = sum(bool(t.user_attrs.get("requeued")) for t in trials)
    direction = "lowest" if search.minimize else "highest"
    lines = [f"# Search {search.name}: {len(trials)} trials", "",
             f"Made by `python -m experiments.search ... --report` from study '{search.name}' and the trials' run "
             f"dirs in {folder}. Objective: the {direction} **{search.metric}** at a trial's last in-training "
             f"evaluation ({search.fixed.eval.num_samples} samples vs MNIST {search.fixed.eval.reference}, every "
             f"{search.fixed.eval.every_epochs} epoch(s), up to {search.fixed.train.epochs} epochs); sampler "
             f"{search.sampler}, pruner {search.pruner}, budget {search.trials} trials.", "",
             "Trials: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n) +
             (f" ({requeued} of the failed were re-queued and resumed)" if requeued else "") + ".", ""]
    keys = [d.key for d in search.space]
    if best:
        lines += ["## Best trials", "", *best_table(folder, best[:BEST_SHOWN], keys, search.metric), ""]
        write_best_config(search, best[0], folder / "best.yaml")
        lines += [f"`best.yaml` is trial {best[0].number}'s config: `python train_ddp.py --config "
                  f"{folder / 'best.yaml'}` trains it as is.", ""]
    else:
        lines += ["No trial has completed yet.", ""]
    ended = [t for t in trials if t.state in (State.PRUNED, State.FAIL)]
    if ended:
        lines += ["## Pruned and failed trials", "",
                  *_markdown(["trial", "state", "reason"], [[str(t.number), t.state.name.lower(),
                                                            t.user_attrs.get("reason", "-")] for t in ended]), ""]
    running = [t for t in trials if t.state == State.RUNNING]
    if running:
        lines += ["Running: " + ", ".join(f"trial {t.number} on {t.user_attrs.get('worker', '?')}" for t in running)
                  + " (a trial whose worker died is re-queued by the next command run after 4 missed heartbeats).", ""]
    lines += [f"![{title}]({name})\n" for title, name in optuna_plots(study, folder, keys, len(complete))]
    if best:
        members = [read_member(folder / t.user_attrs["run"], None) for t in best[:CURVES_SHOWN]]
        (folder / BEST_PLOTS).mkdir(exist_ok=True)
        lines += [f"The best {len(members)} trials' runs:", ""]
        lines += [f"![{title}]({BEST_PLOTS}/{name})\n" for title, name in write_plots(folder / BEST_PLOTS, members)
                  if name != "d_outputs.png"]
    atomic_write(folder / "search.md", "\n".join(lines).encode())
    return folder / "search.md"


def best_table(folder: Path, trials: list, keys: list[str], metric: str) -> list[str]:
    rows = []
    for t in trials:
        run = read_member(folder / t.user_attrs["run"], None)
        rows.append([str(t.number), t.user_attrs["run"], *(_value(t.params.get(k)) for k in keys), _fmt(t.value),
                     _fmt(t.user_attrs.get("train_seconds"), 0), _fmt(run.last.get("classes_covered"), 0),
                     _fmt(run.last.get("background_gap"), 3)])
    return _markdown(["trial", "run", *keys, metric, "train s", "classes", "background gap"], rows)


def _value(value) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def write_best_config(search: Search, trial, path: Path) -> None:
    """The best trial's full config (base, settings, its values), named for the search, as YAML."""
    overrides, _ = search.trial_settings(_Fixed(trial.params))
    config = load_config(search.base, [*overrides, f"name={search.name}-best"]).to_dict()
    header = (f"# {search.name}: trial {trial.number} ({trial.user_attrs.get('run')}), {search.metric} "
              f"{trial.value:.4g} at its last evaluation. Train it: python train_ddp.py --config {path}\n")
    atomic_write(path, (header + yaml.safe_dump(config, sort_keys=False)).encode())


class _Fixed:
    """Answers a search's suggest calls with a finished trial's values (to rebuild its settings)."""

    def __init__(self, params: dict):
        self.params = params

    def suggest_categorical(self, name, choices):
        return self.params[name]

    def suggest_int(self, name, low, high):
        return self.params[name]

    def suggest_float(self, name, low, high, log=False):
        return self.params[name]


def optuna_plots(study, folder: Path, keys: list[str], complete: int) -> list[tuple[str, str]]:
    """(title, file) of Optuna's matplotlib plots that the study has enough trials for."""
    if complete < 2:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots
    made = [("Optimization history", "search_history.png", lambda: plots.plot_optimization_history(study)),
            ("Intermediate values (each evaluation)", "search_intermediate.png",
             lambda: plots.plot_intermediate_values(study)),
            ("Parallel coordinates", "search_parallel.png", lambda: plots.plot_parallel_coordinate(study)),
            ("Slices", "search_slices.png", lambda: plots.plot_slice(study))]
    if complete >= 3 and len(keys) > 1:
        made.insert(1, ("Parameter importances", "search_importances.png",
                        lambda: plots.plot_param_importances(study)))
    written = []
    for title, name, draw in made:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental; flat axes warn
            axes = draw()
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        atomic_write(folder / name, buffer.getbuffer())
        plt.close(figure)
        written.append((title, name))
    return written

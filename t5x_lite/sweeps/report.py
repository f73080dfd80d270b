"""A sweep's results, rebuilt from its trial directories alone (`sweep --report_only`).

Per trial: its bindings and seed, parameters and FLOPs per step (from its first training
stage's log and metrics), final train and validation loss, and the sweep's own metrics.
Per group of trials that differ only in the seed: the mean ± std of each figure. Written
as `results.csv` (a row per trial), `results.md` (a row per group, the best mean of each
column in bold: the lowest for losses and perplexities, the highest otherwise, as T5's
tables mark theirs), `validation_loss.png` (each trial's curve) and, for the first of the
sweep's metrics that is not a loss, `metric.png` (a bar per group, ± std).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

from t5x_lite import metrics as metrics_lib, paths
from t5x_lite.sweeps import runner, spec

_PARAMETERS = re.compile(r"model: ([\d,]+) parameters")
BUILT_IN = ("parameters", "tflops_per_step", "train_loss", "validation_loss")
DESCRIPTIVE = ("parameters", "tflops_per_step")  # what a trial is, not how well it did


def _first_training_stage(sweep: spec.Sweep) -> spec.Stage | None:
    return next((s for s in sweep.stages if s.trains), None)


def _last(records: Sequence[dict], name: str) -> float:
    values = [r[name] for r in records if name in r]
    return float(values[-1]) if values else math.nan


def _metric(directory: str, metric: str) -> float:
    stage, _, name = metric.partition(":")
    stage_dir = paths.as_path(directory) / stage
    if "#" in name:
        file, _, keys = name.partition("#")
        path = stage_dir / file
        if not path.exists():
            return math.nan
        value: Any = json.loads(path.read_text())
        for key in keys.split("."):
            value = value.get(key, math.nan) if isinstance(value, dict) else math.nan
        return float(value)
    if not (stage_dir / "metrics.jsonl").exists():
        return math.nan
    return _last(metrics_lib.read_metrics(str(stage_dir)), name)


def trial_row(trial: spec.Trial, output_dir: str) -> dict[str, Any]:
    directory = runner.trial_dir(output_dir, trial)
    status = runner.read_status(directory)
    row = {"trial": trial.name, **{k: v for k, v in trial.values.items()}, "seed": trial.seed,
           "status": status.get("status", "not run"),
           "error": next((s.get("error") for s in status.get("stages", {}).values()
                          if s.get("error")), "")}
    train = _first_training_stage(trial.sweep)
    row.update(dict.fromkeys(BUILT_IN, math.nan))
    if train is not None and (paths.as_path(directory) / train.name / "metrics.jsonl").exists():
        records = metrics_lib.read_metrics(f"{directory}/{train.name}")
        row.update(tflops_per_step=_last(records, "perf/tflops_per_step"),
                   train_loss=_last(records, "train/loss"),
                   validation_loss=_last(records, "eval/loss"))
        log = paths.as_path(directory) / f"{train.name}.log"
        found = _PARAMETERS.search(log.read_text()) if log.exists() else None
        row["parameters"] = float(found.group(1).replace(",", "")) if found else math.nan
    row.update({metric: _metric(directory, metric) for metric in trial.sweep.metrics})
    return row


def lower_is_better(column: str) -> bool:
    return any(word in column for word in ("loss", "perplexity"))


def grouped(sweep: spec.Sweep, rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Rows of trials that differ only in the seed, as mean and sample std (n - 1) per figure."""
    figures = [*BUILT_IN, *sweep.metrics]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(_binding(sweep, row), []).append(row)
    result = []
    for members in groups.values():
        entry = {k: members[0][k] for k in _axis_keys(sweep)}
        entry["seeds"] = sum(m["status"] == "done" for m in members)
        for name in figures:
            values = [m[name] for m in members if m["status"] == "done"
                      and not math.isnan(m[name])]
            entry[name] = (float(np.mean(values)) if values else math.nan,
                           float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)
        result.append(entry)
    return result


def _axis_keys(sweep: spec.Sweep) -> list[str]:
    return [key for keys in sweep.axes.values() for key in keys]


def _binding(sweep: spec.Sweep, values: Mapping[str, Any]) -> tuple[str, ...]:
    """What trials differing only in the seed share: their axis values (exactly)."""
    return tuple(repr(values[k]) for k in _axis_keys(sweep))


def _label(sweep: spec.Sweep, values: Mapping[str, Any]) -> str:
    """A binding's short name for plots: each distinct value once."""
    return ", ".join(dict.fromkeys(spec.short(values[k]) for k in _axis_keys(sweep))) \
        or sweep.name


def markdown(sweep: spec.Sweep, groups: Sequence[dict], failed: Sequence[dict]) -> str:
    keys, figures = _axis_keys(sweep), [*BUILT_IN, *sweep.metrics]
    best = {}
    for name in figures:
        if name in DESCRIPTIVE:
            continue
        means = [g[name][0] for g in groups if not math.isnan(g[name][0])]
        if means:
            best[name] = min(means) if lower_is_better(name) else max(means)
    headers = [*keys, "seeds", *(name.rpartition("#")[2] or name for name in figures)]
    lines = [f"# Sweep {sweep.name}", "",
             "| " + " | ".join(headers) + " |",
             "|" + "---|" * (len(keys) + 1 + len(figures))]
    for group in groups:
        cells = [spec.short(group[k]) for k in keys] + [str(group["seeds"])]
        for name in figures:
            mean, std = group[name]
            spread = not math.isnan(std) and name not in DESCRIPTIVE
            text = _number(mean) + (f" ± {_number(std)}" if spread else "")
            cells.append(f"**{text}**" if name in best and mean == best[name] else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample std over seeds (when more than one finished); bold: the best "
              "mean of its column (lowest loss, highest otherwise)."]
    if failed:
        lines += ["", "Failed trials:", ""]
        lines += [f"* `{row['trial']}`: {row['error']}" for row in failed]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def write(sweep: spec.Sweep, output_dir: str) -> dict[str, str]:
    """Builds the report from the trial directories; returns {what: path}."""
    rows = [trial_row(trial, output_dir) for trial in spec.trials(sweep)]
    directory = paths.as_path(output_dir) / sweep.name
    paths.ensure_dir(directory)
    paths.atomic_write_csv(directory / "results.csv", rows, rows[0])
    groups = grouped(sweep, rows)
    failed = [row for row in rows if row["status"] == "failed"]
    paths.atomic_write_text(directory / "results.md", markdown(sweep, groups, failed))
    written = {"csv": str(directory / "results.csv"), "markdown": str(directory / "results.md")}
    written.update(_plots(sweep, output_dir, groups))
    return written


def _curves(plt, sweep: spec.Sweep, output_dir: str, stage: str):
    """Every trial's validation loss: a colour per binding, a line style per seed."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours, styles = {}, ("-", "--", ":", "-.")
    for trial in spec.trials(sweep):
        stage_dir = paths.as_path(runner.trial_dir(output_dir, trial)) / stage
        if not (stage_dir / "metrics.jsonl").exists():
            continue
        points = [(r["step"], r["eval/loss"]) for r in
                  metrics_lib.read_metrics(str(stage_dir)) if "eval/loss" in r]
        if not points:
            continue
        key = _binding(sweep, trial.values)
        label = None
        if key not in colours:
            colours[key] = f"C{len(colours) % 10}"
            label = _label(sweep, trial.values)
        style = styles[sweep.seeds.index(trial.seed) % len(styles)]
        ax.plot(*zip(*points), marker=".", color=colours[key], linestyle=style, label=label)
    seeds = ", ".join(f"{s} {styles[i % len(styles)]}" for i, s in enumerate(sweep.seeds))
    ax.set(xlabel="step", ylabel="validation loss",
           title=f"{sweep.name} ({stage}); seeds: {seeds}")
    if ax.lines:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def _plots(sweep: spec.Sweep, output_dir: str, groups: Sequence[dict]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    directory = paths.as_path(output_dir) / sweep.name
    train = _first_training_stage(sweep)
    if train is not None:
        fig = _curves(plt, sweep, output_dir, train.name)
        if fig.axes[0].lines:
            written["curves"] = metrics_lib.save_figure(fig, directory / "validation_loss.png")
        plt.close(fig)
    downstream = [m for m in sweep.metrics if not lower_is_better(m)]
    if downstream:
        name = downstream[0]
        labels = [_label(sweep, g) for g in groups]
        means = [g[name][0] for g in groups]
        stds = [0.0 if math.isnan(g[name][1]) else g[name][1] for g in groups]
        fig, ax = plt.subplots(figsize=(max(4, len(groups) * 1.2), 4))
        ax.bar(range(len(groups)), means, yerr=stds, capsize=4)
        ax.set_xticks(range(len(groups)), labels, rotation=30, ha="right", fontsize=7)
        ax.set(ylabel=name, title=f"{sweep.name}: {name} (± std over seeds)")
        fig.tight_layout()
        written["metric"] = metrics_lib.save_figure(fig, directory / "metric.png")
        plt.close(fig)
    return written

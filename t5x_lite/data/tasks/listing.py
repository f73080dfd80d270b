"""What `t5x-lite tasks` and `t5x-lite mixture` print: the registry and a mixture's shares."""
from __future__ import annotations

from typing import Sequence

from t5x_lite.data.tasks import mixtures, task as task_lib


def _count(task: task_lib.Task, split: str, data_dir: str | None) -> str:
    """Examples in a split, or '-' when its data is not prepared here (TFDS tasks need a
    data_dir holding them)."""
    import tensorflow_datasets as tfds

    try:
        return str(len(task.records(split, data_dir)))
    except (FileNotFoundError, tfds.core.registered.DatasetNotFoundError):
        return "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()
    return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def task_lines(data_dir: str | None = None, cluster: str | None = None,
               counts: bool = True) -> list[str]:
    """One row per registered task: name, clusters, source, examples per split (train /
    dev / test), templates (inverse ones in parentheses), metric; then the cluster table
    and the registered mixtures."""
    rows = []
    for name in task_lib.names():
        task = task_lib.get(name)
        if cluster is not None and cluster not in task.clusters:
            continue
        sizes = "/".join(_count(task, s, data_dir) for s in task_lib.SPLITS) if counts else "?"
        inverse = len(task.templates) - len(task.eval_template_indices)
        rows.append([name, ",".join(task.clusters), task.source.describe(), sizes,
                     f"{len(task.templates)} ({inverse} inverse)", task.metric])
    lines = _table(["task", "clusters", "source", "train/dev/test", "templates", "metric"],
                   rows)
    lines.append("")
    for name, members in task_lib.clusters().items():
        if cluster is None or name == cluster:
            lines.append(f"cluster {name}: {', '.join(members)}")
    lines.append(f"mixtures: {', '.join(mixtures.names())}")
    return lines


def mixture_lines(data) -> list[str]:
    """Each task of an `InstructionData`'s mixture: its examples, rate and share."""
    mixture = data.mixture
    counts = {name: data.num_examples(name) for name in mixture.task_names()}
    rates = mixture.rates(counts.__getitem__)
    shares = mixture.shares(counts.__getitem__)
    rows = [[name, task_lib.get(name).cluster, str(counts[name]), f"{rates[name]:.1f}",
             f"{100 * shares[name]:.2f}%"] for name in mixture.task_names()]
    lines = [f"mixture {mixture.name} ({data.split} split, {len(rows)} tasks, rate "
             f"{mixture.rate})"]
    return lines + _table(["task", "cluster", "examples", "rate", "share"], rows)

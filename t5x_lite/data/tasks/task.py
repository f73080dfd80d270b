"""A `Task`: where an instruction task's data comes from, how a record becomes named fields,
which cluster it belongs to, how it is scored, and its templates. Plus the task registry.

seqio-like but small. A task's examples come from a `Source` in three logical splits:

    train   what instruction tuning samples from (FLAN 2021: the first 30,000 train records)
    dev     picks the best template at evaluation (FLAN: the last 200 train records)
    test    what is reported (FLAN: the official validation split)

A preprocessor maps one raw record to an *example*: a dict of string fields for the templates,
`answer` (the target text), optionally `options` (the answer choices of a classification task,
`answer` among them) and `answers` (every acceptable answer: several correct options, or
several references for exact match / F1). It returns None for a record to skip (e.g. SNLI's
label -1); the pipeline counts those.

Tasks register by name (`register`), and clusters are read off the tasks' `clusters` fields,
so the cluster table can never disagree with the tasks. `t5x-lite tasks` prints the registry.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Protocol, Sequence

from t5x_lite.data.tasks.templates import FLAN_OPTIONS, OptionsStyle, Template, fields_of

METRICS = ("rank_classification", "exact_match", "f1", "bleu", "rouge")
SPLITS = ("train", "dev", "test")
Example = dict[str, Any]
Preprocessor = Callable[[Mapping[str, Any]], "Example | None"]


class Source(Protocol):
    """Random-access records of a task's logical splits ('train', 'dev', 'test')."""

    def describe(self) -> str: ...

    def records(self, split: str, data_dir: str | None) -> Sequence[Mapping[str, Any]]: ...


class _Slice(Sequence):
    """Records [start, stop) of a random-access source, itself random-access."""

    def __init__(self, parent, start: int, stop: int):
        self.parent, self.start, self.stop = parent, start, max(start, stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self.parent[self.start + index % len(self)]


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """A prepared TFDS dataset (array_record) read with `tfds.data_source`, no TensorFlow.

    Splits follow FLAN 2021: train = the first `max_train` records of `train_split` that are
    not dev; dev = its last `dev_size` records; test = `test_split` (the official validation
    split for most datasets). `builder_module` is imported first for TFDS builders that
    register only on import (e.g. `tensorflow_datasets.text.glue`). `data_dir` None uses the
    one the job passes (TASKS_DATA_DIR).
    """

    name: str
    train_split: str = "train"
    test_split: str = "validation"
    dev_size: int = 200
    max_train: int = 30_000
    builder_module: str | None = None
    data_dir: str | None = None

    def describe(self) -> str:
        return f"tfds:{self.name}"

    def _split(self, split: str, data_dir: str | None):
        import tensorflow_datasets as tfds

        from t5x_lite import paths

        if self.builder_module:
            importlib.import_module(self.builder_module)
        directory = self.data_dir or data_dir or tfds.core.constants.get_default_data_dir()
        if ":" in self.name:
            name, version = self.name.split(":")
            prepared = paths.as_path(directory) / name / version / "dataset_info.json"
            if not prepared.exists():
                raise FileNotFoundError(
                    f"{self.name} is not prepared in {directory} (build it there as "
                    "array_record: tfds build --file_format=array_record)")
        # download=False: a dataset missing from data_dir is an error, never a download.
        return tfds.data_source(self.name, split=split, download=False,
                                data_dir=str(paths.as_path(directory)))

    def records(self, split: str, data_dir: str | None = None):
        if split == "test":
            return self._split(self.test_split, data_dir)
        train = self._split(self.train_split, data_dir)
        dev_start = max(len(train) - self.dev_size, 0)
        if split == "dev":
            return _Slice(train, dev_start, len(train))
        if split == "train":
            return _Slice(train, 0, min(dev_start, self.max_train))
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@dataclasses.dataclass(frozen=True)
class Task:
    """One instruction task (see the module docstring). `clusters[0]` is its main cluster;
    FLAN lists a few tasks in more than one."""

    name: str
    source: Source
    preprocessor: Preprocessor
    clusters: tuple[str, ...]
    metric: str
    templates: tuple[Template, ...]
    options_style: OptionsStyle = FLAN_OPTIONS

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name!r}: metric must be one of {METRICS}, got "
                             f"{self.metric!r}")
        if isinstance(self.clusters, str):
            object.__setattr__(self, "clusters", (self.clusters,))
        if not self.clusters or not self.templates:
            raise ValueError(f"task {self.name!r} needs at least one cluster and one template")
        if self.metric == "rank_classification" and not self.is_classification:
            raise ValueError(f"task {self.name!r}: rank classification needs templates with "
                             "'{options_}'")

    @property
    def cluster(self) -> str:
        return self.clusters[0]

    @property
    def is_classification(self) -> bool:
        """FLAN's rule: a task whose (non-inverse) inputs patterns show options."""
        return any(t.has_options for t in self.templates if not t.inverse)

    @property
    def eval_template_indices(self) -> list[int]:
        """Templates used for evaluation: every one but the inverse ones."""
        return [i for i, t in enumerate(self.templates) if not t.inverse]

    def input_fields(self) -> list[str]:
        """The fields the first evaluation template's inputs read (options excluded): what an
        instruction-free rendering shows (FLAN's 'no template' ablation)."""
        first = self.templates[self.eval_template_indices[0]]
        return [f for f in dict.fromkeys(fields_of(first.inputs)) if f != "options_"]

    def example(self, record: Mapping[str, Any]) -> Example | None:
        return self.preprocessor(record)

    def render(self, example: Example, template_index: int, *,
               with_options: bool = True) -> tuple[str, str]:
        return self.templates[template_index].render(
            example, with_options=with_options, options_style=self.options_style,
            task=self.name, index=template_index)

    def records(self, split: str, data_dir: str | None = None):
        return self.source.records(split, data_dir)


def correct_options(example: Example) -> list[int]:
    """Indices of the options that are right answers (`answers`, else `answer`)."""
    answers = set(example.get("answers") or [example["answer"]])
    return [i for i, option in enumerate(example.get("options") or []) if option in answers]


def text(value: Any) -> str:
    """A TFDS text feature (bytes, numpy bytes or str) as str."""
    if hasattr(value, "item") and not isinstance(value, (bytes, str)):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------------- registry
_TASKS: dict[str, Task] = {}


def register(task: Task, *, replace: bool = False) -> Task:
    """Adds `task` to the registry; a second task of the same name is an error unless
    `replace` (a task defined at run time from a file, e.g. rejection-sampled data)."""
    if task.name in _TASKS and _TASKS[task.name] is not task and not replace:
        raise ValueError(f"a task named {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


# The modules that define tasks (and their mixtures) register them on import.
DEFINITION_MODULES = ("t5x_lite.data.tasks.flan_tasks", "t5x_lite.data.tasks.embedded_tasks")


def _load_definitions() -> None:
    for module in DEFINITION_MODULES:
        importlib.import_module(module)


def get(name: str) -> Task:
    _load_definitions()
    if name not in _TASKS:
        import difflib

        close = difflib.get_close_matches(name, _TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"no task named {name!r}{hint}")
    return _TASKS[name]


def names() -> list[str]:
    _load_definitions()
    return sorted(_TASKS)


def clusters(task_names: Sequence[str] | None = None) -> dict[str, list[str]]:
    """{cluster: [task names]} over all registered tasks (or `task_names`); a task listed in
    several clusters appears under each."""
    table: dict[str, list[str]] = {}
    for name in task_names if task_names is not None else names():
        for cluster in get(name).clusters:
            table.setdefault(cluster, []).append(name)
    return {k: sorted(v) for k, v in sorted(table.items())}

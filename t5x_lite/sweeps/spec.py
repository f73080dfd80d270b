"""A sweep file, and the trials it expands into.

A sweep is a TOML file (Python's own `tomllib` reads it):

    name = "lr"                      # the sweep's directory under --output_dir
    seeds = [0, 1, 2]                # bound as SEED in every training stage
    metrics = ["train:eval/loss", "eval:results.json#mean"]

    [[stage]]                        # run in order, each a `t5x-lite` process
    name = "train"                   # MODEL_DIR = <trial>/train
    command = "train"
    gin_files = ["quickstart/decoder_lm.gin"]
    bindings = { TRAIN_STEPS = 200 }
    [[stage]]
    name = "eval"
    command = "eval"
    model_dir = "train"              # reads the train stage's MODEL_DIR
    gin_files = ["quickstart/decoder_lm.gin"]
    args = ["--mixture=embedded_suite", "--output_dir={stage_dir}"]

    [axes.lr]                        # an axis: its lists are zipped (equal lengths)
    LEARNING_RATE = [1e-3, 3e-3]
    "train:WARMUP_STEPS" = [10, 20]  # STAGE:NAME binds one stage only
    [axes.arch]                      # axes multiply: 2 x 2 x 3 seeds = 12 trials
    "train:gin_file" = ["models/decoder_tiny.gin", "models/decoder_50m.gin"]

An axis value is a gin value written as TOML (strings are gin strings: "'gelu'" in TOML
is the gin string 'gelu'); a key `gin_file` adds a gin file instead. `{trial_dir}` and
`{stage_dir}` in args are the trial's and the stage's directories. A metric is
`STAGE:NAME` (the last value of NAME in that stage's metrics.jsonl) or `STAGE:FILE#KEY.KEY`
(a number in a JSON file of the stage's directory).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import tomllib
from typing import Any, Mapping, Sequence

from t5x_lite import paths
from t5x_lite.errors import InputError

# Commands that train (and take SEED and resume from MODEL_DIR's checkpoints).
TRAINING_COMMANDS = ("train", "train_reward", "train_classifier", "dpo", "ppo")
GIN_FILE = "gin_file"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    command: str
    gin_files: tuple[str, ...] = ()
    bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    args: tuple[str, ...] = ()
    model_dir: str | None = None  # another stage's directory to read; None: its own

    @property
    def trains(self) -> bool:
        return self.command in TRAINING_COMMANDS


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    stages: tuple[Stage, ...]
    axes: Mapping[str, Mapping[str, list]]  # axis → {key: values}, zipped within an axis
    seeds: tuple[int, ...] = (0,)
    metrics: tuple[str, ...] = ()
    source: str = "<sweep>"


@dataclasses.dataclass(frozen=True)
class Trial:
    """One point of the sweep: a value per axis key, and a seed."""

    sweep: Sweep
    values: Mapping[str, Any]  # axis key → value (STAGE:NAME or NAME)
    seed: int

    @property
    def name(self) -> str:
        """Readable bindings and a short hash of the exact ones (directory-safe)."""
        parts = []
        for key, value in self.values.items():
            name = key.split(":")[-1].split(".")[-1]
            part = short(value) if name == GIN_FILE else f"{name}={short(value)}"
            if part not in parts:  # a gin file several stages read: named once
                parts.append(part)
        parts.append(f"seed={self.seed}")
        digest = hashlib.sha1(repr((sorted(self.values.items()), self.seed)).encode())
        readable = re.sub(r"[^A-Za-z0-9=.,_+-]+", "_", ",".join(parts))[:120]
        return f"{readable}-{digest.hexdigest()[:8]}"

    @property
    def group(self) -> tuple:
        """Trials that differ only in the seed share a group (averaged in the report)."""
        return tuple(sorted((k, repr(v)) for k, v in self.values.items()))

    def stage_values(self, stage: Stage) -> tuple[list[str], dict[str, Any]]:
        """(extra gin files, bindings) the axes give `stage`."""
        files, bindings = [], {}
        for key, value in self.values.items():
            scope, _, name = key.rpartition(":")
            if scope and scope != stage.name:
                continue
            if name == GIN_FILE:
                files.append(value)
            else:
                bindings[name] = value
        return files, bindings


def short(value: Any) -> str:
    """A value as a name part: a gin file's stem, a string without its quotes."""
    text = value if isinstance(value, str) else repr(value)
    return text.rsplit("/", 1)[-1].removesuffix(".gin").strip("'\"")


def load(path: str) -> Sweep:
    """Reads and checks a sweep file; a mistake is one line naming the file (InputError)."""
    text = paths.as_path(path).read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: {error}") from error
    return parse(raw, path)


def parse(raw: Mapping[str, Any], source: str = "<sweep>") -> Sweep:
    def fail(message: str):
        raise InputError(f"{source}: {message}")

    known = {"name", "stage", "axes", "seeds", "metrics"}
    if unknown := sorted(set(raw) - known):
        fail(f"unknown key(s) {unknown}; a sweep has {sorted(known)}")
    stages = []
    for entry in raw.get("stage") or fail("no [[stage]]: a sweep runs at least one command"):
        if unknown := sorted(set(entry) - {f.name for f in dataclasses.fields(Stage)}):
            fail(f"stage {entry.get('name')!r}: unknown key(s) {unknown}")
        if "name" not in entry or "command" not in entry:
            fail(f"every [[stage]] needs a name and a command, got {entry}")
        stages.append(Stage(entry["name"], entry["command"], tuple(entry.get("gin_files", ())),
                            dict(entry.get("bindings", {})), tuple(entry.get("args", ())),
                            entry.get("model_dir")))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        fail(f"stage names must differ, got {names}")
    for stage in stages:
        if stage.model_dir is not None and stage.model_dir not in names:
            fail(f"stage {stage.name!r}: model_dir {stage.model_dir!r} is not a stage")
    axes = raw.get("axes", {})
    for axis, keys in axes.items():
        lengths = {key: len(values) if isinstance(values, list) else -1
                   for key, values in keys.items()}
        if -1 in lengths.values() or len(set(lengths.values())) != 1:
            fail(f"axis {axis!r}: every key needs a list, all of one length (zipped), got "
                 f"{lengths}")
        for key in keys:
            scope = key.rpartition(":")[0]
            if scope and scope not in names:
                fail(f"axis {axis!r}: {key!r} names no stage (stages: {names})")
    seeds = raw.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) for s in seeds):
        fail(f"seeds must be a non-empty list of integers, got {seeds!r}")
    for metric in raw.get("metrics", []):
        if metric.partition(":")[0] not in names or ":" not in metric:
            fail(f"metric {metric!r} must be STAGE:NAME or STAGE:FILE#KEY (stages: {names})")
    name = raw.get("name") or fail("the sweep needs a name")
    return Sweep(name, tuple(stages), axes, tuple(seeds), tuple(raw.get("metrics", [])),
                 source)


def trials(sweep: Sweep) -> list[Trial]:
    """Every trial: the product over axes (zipped within each), then over seeds."""
    per_axis = []
    for keys in sweep.axes.values():
        columns = list(keys.items())
        per_axis.append([{key: values[i] for key, values in columns}
                         for i in range(len(columns[0][1]))])
    result = []
    for combination in itertools.product(*per_axis):
        values = {k: v for point in combination for k, v in point.items()}
        result.extend(Trial(sweep, values, seed) for seed in sweep.seeds)
    return result


def gin_value(value: Any) -> str:
    """A TOML value as gin text: numbers and booleans as written, lists as tuples, strings
    as they are (a gin string is written with its quotes)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(gin_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{gin_value(k)!s}: {gin_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def stage_command(trial: Trial, stage: Stage, trial_dir: str) -> list[str]:
    """The `t5x-lite` arguments (after the program name) of one stage of one trial."""
    files, bindings = trial.stage_values(stage)
    stage_dir = f"{trial_dir}/{stage.name}"
    model_dir = f"{trial_dir}/{stage.model_dir or stage.name}"
    arguments = [stage.command]
    arguments += [f"--gin_file={f}" for f in (*stage.gin_files, *files)]
    merged = {**stage.bindings, **bindings}
    if stage.trains:
        merged["SEED"] = trial.seed
    merged["MODEL_DIR"] = f"'{model_dir}'"
    arguments += [f"--gin.{name}={gin_value(value)}" for name, value in merged.items()]
    arguments += [arg.format(trial_dir=trial_dir, stage_dir=stage_dir) for arg in stage.args]
    return arguments


def describe(sweep: Sweep, selected: Sequence[Trial]) -> str:
    return (f"sweep {sweep.name!r} ({sweep.source}): {len(selected)} trials = "
            + " x ".join([f"{len(next(iter(k.values())))} {a}" for a, k in sweep.axes.items()]
                         + [f"{len(sweep.seeds)} seeds"]))

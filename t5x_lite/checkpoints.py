"""Checkpoints: an orbax CheckpointManager holding the train state and the data iterator.

Each step directory has two items: `state` (params, optimizer state, step, RNG; restored
straight into the target shardings: orbax reads any sharding's slices from the stored arrays,
so the state of one mesh loads on another) and `data` (one grain iterator file per process,
`process_<i>-of-<n>.json`, one stream per batch piece the process reads). Saves are
asynchronous, and orbax lists only steps it finalized: a save cut short
(`<step>.orbax-checkpoint-tmp-*`, or no `commit_success.txt` on object stores) is never seen.

`Checkpointer.restore_latest` tells three failures of a listed step apart:

* **Mismatch** (`CheckpointMismatchError`): the step is intact but was written by a
  differently configured run: its tree, shapes or dtypes (orbax's stored metadata) differ
  from the state this run builds, or its iterator files are for another process count, or
  the saved iterator state has another structure than this run's pipeline (other batch
  pieces: grain would load it anyway, into the wrong streams), or it has no iterator state.
  Nothing on disk is touched: training never restarts at step 0 over checkpoints it cannot
  resume.
* **Damage**: the files are provably broken: the state item or this process's iterator file
  is missing, metadata JSON does not parse, tensorstore reports a truncated or undecodable
  chunk (DATA_LOSS, OUT_OF_RANGE, NOT_FOUND, "Data corruption", "Truncated ..."), or orbax
  finds the step incomplete. The step is reported, the next older one is tried, and once one
  restores the damaged newer steps are renamed `<step>.unreadable` (kept for inspection,
  their step numbers free again). If every step is damaged nothing is renamed and
  `CheckpointRestoreError` lists them: starting afresh is the user's call.
* Anything else (a permission or network error, a bug) is no proof of damage:
  `CheckpointRestoreError` names the step and directory and nothing is renamed.

With several processes, each checks and restores a step on its own (no collective: a process
failing on its own shards must not leave the others waiting in one), then the worst verdict
of any process is the one all act on. Only process 0 renames, between two barriers; then
every process reloads the step list.

A *params-only* checkpoint (`save_params` / `restore_params`: one orbax PyTree, no optimizer
state) is what `t5x-lite convert` writes and `train(init_from=...)` starts a run from.
"""
from __future__ import annotations

import itertools
import json
import logging
import re
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from t5x_lite import paths

logger = logging.getLogger(__name__)

_OK, _DAMAGED, _MISMATCH, _FAILED = range(4)  # verdicts; across processes the worst wins
_SHOWN_LEAVES = 3
_DAMAGE_TYPES = (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, EOFError)
# What tensorstore and orbax say about broken files (tensorstore's status codes, zstd, ocdbt).
_DAMAGE_MESSAGE = re.compile(
    r"DATA_LOSS|OUT_OF_RANGE|NOT_FOUND|[Dd]ata corruption|[Tt]runcated|checksum|"
    r"Error decoding|is not valid for value of size|Found incomplete checkpoint")
# ...unless the storage itself failed to answer: that proves nothing about the files.
_TRANSIENT_MESSAGE = re.compile(
    r"UNAVAILABLE|DEADLINE_EXCEEDED|PERMISSION_DENIED|UNAUTHENTICATED|RESOURCE_EXHAUSTED|"
    r"CANCELLED|ABORTED")
_barrier_ids = itertools.count()


class CheckpointMismatchError(ValueError):
    """An intact checkpoint written by a differently configured run (see module docstring)."""


class CheckpointRestoreError(RuntimeError):
    """A checkpoint that could not be restored and was left in place."""


def _path(path) -> epath.Path:
    """orbax refuses relative paths: local ones (`file://` URLs included) are resolved; other
    URLs (gs://...) are left alone."""
    result = paths.as_path(path)
    return result.resolve() if paths.is_local(result) else result


class Checkpointer:
    def __init__(self, directory: str, *, save_every: int, keep: int | None = 3,
                 async_save: bool = True):
        self.directory = _path(directory)
        # Restores go through the item handlers, not the manager: its restore ends in a
        # barrier that a process failing on its own shards never reaches, leaving the others
        # waiting there (or pairing it with the next collective).
        self._state_handler = ocp.StandardCheckpointHandler()
        self._data_handler = grain.checkpoint.CheckpointHandler()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every,
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def would_save(self, step: int, *, force: bool = False) -> bool:
        """Whether `save(step, ..., force=force)` would write a checkpoint now."""
        return force or self.manager.should_save(step)

    def save(self, step: int, state: Any, data_iterator=None, *, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any, data_iterator=None) -> tuple[int, Any] | None:
        """Restores the newest intact step into `abstract_state`'s shardings.

        Returns (step, state), or None when the directory holds no checkpoint. The data
        iterator, if given, is restored in place. Raises CheckpointMismatchError for a step
        this run's configuration cannot resume, CheckpointRestoreError for one that fails
        without being provably damaged (or when every step is damaged).
        """
        damaged: list[int] = []
        for step in reversed(self.steps()):
            verdict, detail, state = self._attempt(step, abstract_state, data_iterator)
            agreed = _worst_of_all_processes(verdict)
            if agreed not in (_OK, _DAMAGED, _MISMATCH):
                agreed = _FAILED
            if agreed != verdict:
                detail = f"another process could not restore step {step} in {self.directory}"
            if agreed == _OK:
                self._set_aside(damaged)
                return step, state
            if agreed == _MISMATCH:
                raise CheckpointMismatchError(detail)
            if agreed == _FAILED:
                raise CheckpointRestoreError(detail)
            logger.warning("checkpoint at step %d could not be restored (damaged: %s); "
                           "trying an older one", step, detail)
            damaged.append(step)
        if damaged:
            raise CheckpointRestoreError(
                f"every checkpoint in {self.directory} is damaged (steps "
                f"{', '.join(map(str, damaged))}; see the warnings above); move them away to "
                "start this run afresh")
        return None

    def _attempt(self, step: int, abstract_state: Any, data_iterator) -> tuple[int, str, Any]:
        """(verdict, detail, restored state or None) for one step, on this process alone (no
        collective: the processes agree on the verdicts afterwards)."""
        step_dir = self.directory / str(step)
        try:
            found = _check_files(self.directory, step, data_iterator is not None)
            if found is not None:
                return (*found, None)
            if data_iterator is not None:
                difference = _iterator_difference(step_dir / "data" / _data_file(),
                                                  data_iterator)
                if difference:
                    return _MISMATCH, (
                        f"checkpoint step {step} in {self.directory}: its data iterator state "
                        f"does not fit this run's input pipeline ({difference}; the batch "
                        "pieces, DATA_SHARDS or the pipeline changed). Resume with the "
                        "configuration that wrote it, or train in a new model_dir"), None
            differences = _differences(self._state_handler.metadata(step_dir / "state"),
                                       abstract_state)
            if differences:
                return _MISMATCH, (
                    f"checkpoint step {step} in {self.directory} was written for a different "
                    f"train state (model, optimizer or dtypes changed?): {differences}. Resume "
                    "with the configuration that wrote it, or train in a new model_dir"), None
            state = self._state_handler.restore(
                step_dir / "state", args=ocp.args.StandardRestore(abstract_state))
            if data_iterator is not None:
                self._data_handler.restore(
                    step_dir / "data", args=grain.checkpoint.CheckpointRestore(data_iterator))
            return _OK, "", state
        except Exception as error:  # noqa: BLE001 - classified: only proof of damage is kept
            # The traceback, for --verbose: the verdict below keeps one line of it.
            logger.info("restoring step %d of %s failed", step, self.directory, exc_info=True)
            if _is_damage(error):
                return _DAMAGED, f"{step_dir}: {_describe(error)}", None
            return _FAILED, (f"checkpoint step {step} in {self.directory} could not be restored "
                             f"and was left in place (not provably damaged): "
                             f"{_describe(error)}"), None

    def _set_aside(self, steps: list[int]) -> None:
        """Renames damaged newer steps to `<step>.unreadable` (kept for inspection) so the
        saves that follow can reuse their step numbers: process 0 only, once every process is
        done reading them."""
        if not steps:
            return
        barrier = f"t5x_lite_set_aside_{next(_barrier_ids)}_{'_'.join(map(str, steps))}"
        ocp.multihost.sync_global_processes(barrier + "_read")
        if jax.process_index() == 0:
            for step in steps:
                target = self.directory / f"{step}.unreadable"
                suffix = 1
                while target.exists():
                    target = self.directory / f"{step}.unreadable{suffix}"
                    suffix += 1
                (self.directory / str(step)).rename(target)
                logger.warning("set aside the damaged checkpoint at step %d as %s", step, target)
        ocp.multihost.sync_global_processes(barrier + "_renamed")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        self._state_handler.close()


def _check_files(directory: epath.Path, step: int, with_data: bool) -> tuple[int, str] | None:
    """(verdict, detail) when a listing of the step shows damage or a mismatch, else None."""
    step_dir = directory / str(step)
    state = step_dir / "state"
    if not (state / "_METADATA").exists():
        what = "state/_METADATA" if state.exists() else "the state item"
        return _DAMAGED, f"{step_dir}: {what} is missing"
    if not with_data:
        return None
    data = step_dir / "data"
    if not data.exists():
        return _MISMATCH, (f"checkpoint step {step} in {directory} holds no data iterator "
                           "state (saved without one); this run restores one")
    if (data / _data_file()).exists():
        return None
    count = jax.process_count()
    counts = sorted({int(m.group(1)) for m in (
        re.fullmatch(r"process_\d+-of-(\d+)\.json", p.name) for p in data.iterdir()) if m})
    if counts and count not in counts:
        return _MISMATCH, (
            f"checkpoint step {step} in {directory} was written by "
            f"{' or '.join(map(str, counts))} process(es), this run has {count}: the data "
            "iterator state of each process cannot be split or merged. Resume with "
            f"{counts[-1]} processes, or train in a new model_dir")
    return _DAMAGED, f"{step_dir}: data/{_data_file()} is missing"


def _data_file() -> str:
    """This process's file of the data item (grain's name for it)."""
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def _iterator_difference(saved_file: epath.Path, iterator) -> str:
    """Where the saved iterator state and `iterator`'s differ in structure (dict keys, list
    lengths, leaf types: one stream per batch piece, one node per pipeline stage); '' when
    they agree. grain would otherwise load a state of 4 streams into a pipeline of 2 without
    a word."""
    current = iterator.get_state()
    if isinstance(current, bytes):  # a grain DataLoader's state is JSON bytes
        current = current.decode()
    # As it would be saved: JSON (tuples in the state, e.g. the span-corruption chunker's
    # remainder slices, come back as lists).
    current = json.loads(current if isinstance(current, str) else json.dumps(current))
    return _structure_difference(json.loads(saved_file.read_text()), current, "state")


def _structure_difference(saved: Any, current: Any, where: str) -> str:
    if isinstance(saved, dict) and isinstance(current, dict):
        if saved.keys() != current.keys():
            return f"{where}: saved keys {sorted(saved)}, this run {sorted(current)}"
        found = (_structure_difference(saved[k], current[k], f"{where}.{k}") for k in saved)
    elif isinstance(saved, list) and isinstance(current, list):
        if len(saved) != len(current):
            return f"{where}: {len(saved)} entries saved, {len(current)} in this run"
        found = (_structure_difference(a, b, f"{where}[{i}]")
                 for i, (a, b) in enumerate(zip(saved, current)))
    else:
        same = type(saved) is type(current) or {type(saved), type(current)} <= {int, float}
        return "" if same else (f"{where}: saved {type(saved).__name__}, "
                                f"this run {type(current).__name__}")
    return next((difference for difference in found if difference), "")


def _differences(saved_metadata: Any, abstract: Any) -> str:
    """The first leaves (by path) whose presence, shape or dtype differ; '' when none."""
    if saved_metadata is None:
        raise FileNotFoundError("state/_METADATA holds no tree metadata")
    saved = ocp.tree.to_flat_dict(saved_metadata, sep="/")
    wanted = ocp.tree.to_flat_dict(abstract, sep="/")
    found = []
    for key in sorted(saved.keys() | wanted.keys(),
                      key=lambda k: (not k.startswith("params/"), k)):
        if key not in saved:
            found.append(f"{key}: not in the checkpoint, this run {_describe_leaf(wanted[key])}")
        elif key not in wanted:
            found.append(f"{key}: saved {_describe_leaf(saved[key])}, not in this run's state")
        elif _describe_leaf(saved[key]) != _describe_leaf(wanted[key]):
            found.append(f"{key}: saved {_describe_leaf(saved[key])}, "
                         f"this run {_describe_leaf(wanted[key])}")
    more = f"; and {len(found) - _SHOWN_LEAVES} more" if len(found) > _SHOWN_LEAVES else ""
    return "; ".join(found[:_SHOWN_LEAVES]) + more


def _describe_leaf(leaf: Any) -> str:
    shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    if shape is None or dtype is None:
        return type(leaf).__name__
    return f"{tuple(shape)} {np.dtype(dtype).name}"


def _chain(error: BaseException):
    """The error and its explicit causes (`raise ... from`), not exceptions that happened to
    be handled around it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__


def _is_damage(error: BaseException) -> bool:
    errors = list(_chain(error))
    if any(_TRANSIENT_MESSAGE.search(str(e)) for e in errors):
        return False
    return any(isinstance(e, _DAMAGE_TYPES) or _DAMAGE_MESSAGE.search(str(e)) for e in errors)


def _describe(error: BaseException) -> str:
    """The most specific line of the error chain (tensorstore's own message, not orbax's
    wrapper around it), shortened."""
    errors = list(_chain(error))
    chosen = next((e for e in reversed(errors) if str(e).strip()), error)
    line = str(chosen).strip().splitlines()[0] if str(chosen).strip() else ""
    return f"{type(chosen).__name__}: {line[:300]}"


def _worst_of_all_processes(verdict: int) -> int:
    if jax.process_count() == 1:
        return verdict
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(verdict))))


def save_params(directory: str, params: Any) -> None:
    """Writes a params-only checkpoint to `directory` (replaced if it exists)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(_path(directory), params, force=True)
        checkpointer.wait_until_finished()


def restore_params(directory: str, abstract_params: Any = None) -> Any:
    """Reads a params-only checkpoint: as numpy arrays, or into `abstract_params`'
    shapes, dtypes and (if they carry them) shardings."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(_path(directory), abstract_params)


def restore_train_params(directory: str, abstract_params: Any, step: int | None = None):
    """Only the params of a training checkpoint (`Checkpointer`'s `state` item), as numpy
    arrays, skipping the optimizer state. Newest step unless `step` is given.

    Returns (step, params), or None when `directory` holds no checkpoint or its state has
    no top-level params (PPO's state holds several models and exports its policy). Params of other
    shapes or dtypes than `abstract_params` raise CheckpointMismatchError."""
    path = _path(directory)
    if not path.is_dir():
        return None
    manager = ocp.CheckpointManager(path)
    steps = sorted(manager.all_steps())
    manager.close()
    if not steps:
        return None
    step = steps[-1] if step is None else step
    state_dir = path / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    saved = checkpointer.metadata(state_dir)
    saved = getattr(saved, "item_metadata", saved)  # orbax returns the tree metadata wrapped
    if "params" not in saved:  # a job whose state nests its models (PPO): see its params/
        return None
    differences = _differences(saved["params"], abstract_params)
    if differences:
        raise CheckpointMismatchError(
            f"checkpoint step {step} in {path} holds params of another model: {differences}")
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract_params)
    restored = checkpointer.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                    restore_args={"params": as_numpy}, partial_restore=True),
    )
    return step, restored["params"]

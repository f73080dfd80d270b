"""Checkpoints: an orbax CheckpointManager holding the train state and the data iterator.

Each step directory has two items: `state` (params, optimizer state, step, RNG; restored
straight into the target shardings, so a checkpoint written on one mesh loads on another)
and `data` (the grain iterator state of every process). Saves are asynchronous. Orbax only
publishes a step once it is complete; a published step that nevertheless fails to restore
(damaged files) is reported, renamed to `<step>.unreadable`, and the next older step is
used instead.

A *params-only* checkpoint (`save_params` / `restore_params`: one orbax PyTree, no optimizer
state) is what `t5x-lite convert` writes and `train(init_from=...)` starts a run from.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)


def _absolute(path: str) -> str:
    """orbax refuses relative paths; URLs (gs://...) are left alone."""
    return path if "://" in path else os.path.abspath(path)


class Checkpointer:
    def __init__(self, directory: str, *, save_every: int, keep: int | None = 3,
                 async_save: bool = True):
        self.manager = ocp.CheckpointManager(
            _absolute(directory),
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every,
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def save(self, step: int, state: Any, data_iterator=None, *, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any, data_iterator=None) -> tuple[int, Any] | None:
        """Restores the newest readable step into `abstract_state`'s shardings.

        Returns (step, state), or None when the directory holds no usable checkpoint. The data
        iterator, if given, is restored in place.
        """
        unreadable = []
        for step in reversed(self.steps()):
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if data_iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as error:  # damaged or incompatible: fall back to an older one
                logger.warning(
                    "checkpoint at step %d could not be restored (%s: %s); trying an older one",
                    step, type(error).__name__, str(error).splitlines()[0][:200],
                )
                unreadable.append(step)
                continue
            self._set_aside(unreadable)
            return step, restored["state"]
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Renames unreadable newer steps to `<step>.unreadable` (kept for inspection) so the
        saves that follow can reuse their step numbers."""
        if not steps:
            return
        directory = self.manager.directory
        for step in steps:
            target = directory / f"{step}.unreadable"
            suffix = 1
            while target.exists():
                target = directory / f"{step}.unreadable{suffix}"
                suffix += 1
            (directory / str(step)).rename(target)
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def save_params(directory: str, params: Any) -> None:
    """Writes a params-only checkpoint to `directory` (replaced if it exists)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(_absolute(directory), params, force=True)
        checkpointer.wait_until_finished()


def restore_params(directory: str, abstract_params: Any = None) -> Any:
    """Reads a params-only checkpoint: as numpy arrays, or into `abstract_params`'
    shapes, dtypes and (if they carry them) shardings."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(_absolute(directory), abstract_params)


def restore_train_params(directory: str, abstract_params: Any, step: int | None = None):
    """Only the params of a training checkpoint (`Checkpointer`'s `state` item), as numpy
    arrays, skipping the optimizer state. Newest step unless `step` is given.

    Returns (step, params), or None when `directory` holds no checkpoint."""
    if "://" not in directory and not os.path.isdir(directory):
        return None
    manager = ocp.CheckpointManager(_absolute(directory))
    steps = sorted(manager.all_steps())
    manager.close()
    if not steps:
        return None
    step = steps[-1] if step is None else step
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract_params)
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(_absolute(directory), str(step), "state"),
        args=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                    restore_args={"params": as_numpy}, partial_restore=True),
    )
    return step, restored["params"]

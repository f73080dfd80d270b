"""What the preference-learning jobs share: the mesh and trainer, their batches, the frozen
models they read (SFT reference, reward model) and a pooled evaluation.

The jobs themselves (reward_model.py, dpo.py, ppo.py, best_of_n.py) stay short: each brings
its loss or its iteration and runs the one loop skeleton of train_loop.py (resume, logging,
evaluation, checkpoints, NaN stop).
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import numpy as np

from t5x_lite import checkpoints, partitioning, paths, train_loop
from t5x_lite.data import pipeline
from t5x_lite.errors import InputError
from t5x_lite.models import heads, model_format
from t5x_lite.rlhf import preference_arrays, sequences
from t5x_lite.trainer import Trainer, mesh_and_rules


def prompt_eos(model, instruction_prompts: bool) -> bool:
    """Whether a prompt ends with EOS for `model`, so that it reads prompts as it was tuned
    to: an encoder's inputs always do (as `infer` and span corruption end them); a decoder's
    do when prompts are instruction inputs, which instruction tuning ends with EOS
    (instruction_pipeline.encode_pair), and not when the policy continues raw text (a
    pretrained LM, as in Ziegler et al.'s continuation tasks)."""
    return model_format.of(model).encoder_decoder or instruction_prompts


def batch_shapes(arrays: Mapping[str, np.ndarray], batch_size: int) -> dict:
    """Global batch shapes of batches drawn from `arrays` (rows along the first axis)."""
    return {k: ((batch_size, *v.shape[1:]), v.dtype) for k, v in arrays.items()}


def check_batch(batch_size: int, mesh, rules) -> None:
    divisor = partitioning.batch_divisor(mesh, tuple(tuple(r) for r in rules))
    if batch_size % divisor:
        raise InputError(f"batch_size={batch_size} (BATCH_SIZE) must be a multiple of the "
                         f"{divisor} batch shards of mesh {dict(mesh.shape)} (MESH_SHAPE)")


def train_batches(arrays, mesh, rules, *, batch_size: int, seed: int):
    """This process's endless, shuffled, checkpointable iterator over `arrays` (global
    batches of `batch_size` rows), and a function giving the next global batch on the mesh."""
    rules = tuple(tuple(r) for r in rules)
    index, count = partitioning.batch_shard(mesh, rules)
    iterator = preference_arrays.batches(arrays, batch_size=batch_size, seed=seed,
                                         shard_index=index, num_shards=count)
    sharding = partitioning.batch_sharding(mesh, rules)

    def next_batch():
        return pipeline.global_batch(next(iterator), sharding, batch_size)

    return iterator, next_batch


def evaluate(trainer: Trainer, params, arrays: Mapping[str, np.ndarray],
             padding: Mapping[str, Any]) -> dict[str, float]:
    """The loss's metrics pooled over every row of `arrays`, in the trainer's batch size.
    Each process takes its rows; short batches are filled with `padding` rows (which the loss
    must weigh 0), and every process runs the same number of steps."""
    index, count = partitioning.batch_shard(trainer.mesh, trainer.rules)
    local = trainer.batch_size // count
    rows = len(next(iter(arrays.values())))
    steps = max(1, math.ceil(rows / trainer.batch_size))
    mine = {k: v[index::count] for k, v in arrays.items()}
    totals = None
    for step in range(steps):
        batch = {}
        for name, values in mine.items():
            chunk = values[step * local:(step + 1) * local]
            fill = np.broadcast_to(np.asarray(padding[name], values.dtype),
                                   (local - len(chunk), *values.shape[1:]))
            batch[name] = np.concatenate([chunk, fill])
        sums = jax.device_get(trainer.eval_step(
            params, pipeline.global_batch(batch, trainer.batch_sharding, trainer.batch_size)))
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    return {k: float(v) for k, v in trainer.loss.normalise(totals).items()}


# ------------------------------------------------------------------------ frozen models
def _abstract(module: nn.Module, example_features: Mapping[str, Any], mesh, rules):
    """Abstract params of `module` carrying their shardings on the mesh."""
    rules = tuple(tuple(r) for r in rules)
    with mesh_and_rules(mesh, rules):
        boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), **example_features)
                               ["params"])
    shardings = partitioning.param_shardings(boxed, mesh, rules)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nn.unbox(boxed), shardings)


def example_features(module: nn.Module, prompt_length: int = 2, response_length: int = 2):
    """Features of a one-row (prompt, response) batch: what a module is initialised on (an
    encoder-only model reads them as one row)."""
    if model_format.of(module).encoder_only:
        return {"encoder_input_tokens": np.ones((1, prompt_length + response_length), np.int32)}
    rows = sequences.build(model_format.of(module), np.ones((1, prompt_length), np.int32),
                           [1], np.ones((1, response_length), np.int32), [1])
    return rows.features


def language_model_params(init_from: str, model: nn.Module, mesh, rules):
    """A language model's parameters on the mesh, from a model directory (a run's newest
    checkpoint, an import) or a params-only checkpoint: the SFT policy and reference."""
    abstract = _abstract(model, example_features(model), mesh, rules)
    return train_loop.initial_params(init_from, model, abstract)


def head_params(model_dir: str, head: heads.ScalarHead, mesh, rules):
    """A trained reward model's (ScalarHead) parameters on the mesh, from its run directory:
    the newest checkpoint's params, normalising bias included."""
    abstract = _abstract(head, example_features(head), mesh, rules)
    restored = checkpoints.restore_train_params(
        str(paths.as_path(model_dir) / "checkpoints"), abstract)
    if restored is None:
        raise InputError(f"no reward-model checkpoint in {model_dir}: train one with "
                         "`t5x-lite train_reward` first")
    return partitioning.put_global(restored[1], jax.tree.map(lambda a: a.sharding, abstract))


def with_initial_trunk(state, init_from: str | None, trunk: nn.Module, mesh, rules):
    """A fresh state whose head's trunk starts from a language model (an SFT run)."""
    if not init_from:
        return state
    lm = language_model_params(init_from, trunk, mesh, rules)
    train_loop.say(f"initialised the trunk from {init_from}")
    return state.replace(params=heads.with_trunk(state.params, lm))


def jit_on_mesh(fn: Callable, mesh, rules, **jit_kwargs) -> Callable:
    """`jax.jit(fn)` called inside the mesh and rules the models' activations resolve on."""
    jitted = jax.jit(fn, **jit_kwargs)
    rules = tuple(tuple(r) for r in rules)

    def call(*args, **kwargs):
        with mesh_and_rules(mesh, rules):
            return jitted(*args, **kwargs)

    return call



class Iterators:
    """Several checkpointable data iterators saved as one (PPO's prompts and its
    pretraining batches): grain's checkpoint handler stores the JSON this returns."""

    def __init__(self, **iterators):
        self.iterators = iterators

    def get_state(self) -> bytes:
        return json.dumps({name: it.get_state() for name, it in self.iterators.items()}
                          ).encode()

    def set_state(self, state: bytes) -> None:
        states = json.loads(state)
        for name, iterator in self.iterators.items():
            iterator.set_state(states[name])

    def start_prefetch(self) -> None:
        for iterator in self.iterators.values():
            getattr(iterator, "start_prefetch", lambda: None)()

"""`train`: the pretraining loop that gin wires together (see gin_configs/runs/).

It resumes on its own from the newest readable checkpoint in `model_dir`, logs metrics every
`log_every` steps, evaluates every `eval_every` steps, saves checkpoints with the data
iterator state, and stops with a clear error (keeping the last good checkpoint) if the loss
turns NaN or infinite.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import optax
import tqdm

from t5x_lite import checkpoints, metrics as metrics_lib, partitioning
from t5x_lite.data import feature_converters as converters
from t5x_lite.data import objectives, pipeline
from t5x_lite.trainer import Trainer, summarize_eval

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message says which checkpoint is still good."""


def train(
    *,
    model_dir: str,
    model: nn.Module,
    vocabulary,
    train_data: pipeline.DatasetConfig,
    eval_data: pipeline.DatasetConfig | None = None,
    optimizer: Callable[..., optax.GradientTransformation],
    learning_rate: optax.Schedule,
    train_steps: int,
    batch_size: int,
    feature_lengths: Mapping[str, int],
    mesh_shape=(-1, 1, 1),
    logical_axis_rules=partitioning.DEFAULT_RULES,
    objective=objectives.CausalLM(),
    bidirectional_inputs: bool = True,
    seed: int = 0,
    init_from: str | None = None,
    log_every: int = 10,
    eval_every: int = 100,
    eval_batches: int = 8,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 3,
    label_smoothing: float = 0.0,
    z_loss: float = 1e-4,
    num_microbatches: int = 1,
    peak_flops_per_device: float | None = None,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Trains `model` for `train_steps` steps in total; returns the last logged metrics.

    `feature_lengths` are T5X's TASK_FEATURE_LENGTHS: {'targets': L} for a decoder-only model,
    {'inputs': Li, 'targets': Lt} for an encoder-decoder. `bidirectional_inputs` gives a
    decoder-only model bidirectional attention over an objective's inputs (prefix LM); with
    False the inputs are read causally and only the loss skips them. `init_from`, a
    params-only checkpoint (e.g. from `t5x-lite convert`), gives a new run its initial
    parameters; it is ignored once `model_dir` has a checkpoint to resume from.
    """
    check_arguments(train_steps=train_steps, batch_size=batch_size,
                    feature_lengths=feature_lengths, log_every=log_every,
                    eval_every=eval_every, checkpoint_every=checkpoint_every)
    layout = getattr(model, "feature_converter", "decoder")
    converters.check_layout(layout, feature_lengths)
    model_vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if model_vocab is not None and model_vocab < vocabulary.vocab_size:
        raise ValueError(
            f"vocab_size={model_vocab} of the model is smaller than the vocabulary's "
            f"{vocabulary.vocab_size} ids (pieces + extra ids)"
        )
    os.makedirs(model_dir, exist_ok=True)
    mesh = partitioning.make_mesh(mesh_shape)
    trainer = Trainer(
        model, optimizer(learning_rate=learning_rate), learning_rate, mesh, logical_axis_rules,
        batch_shapes=converters.batch_shapes(layout, feature_lengths, batch_size,
                                             bidirectional_inputs),
        label_smoothing=label_smoothing, z_loss=z_loss, num_microbatches=num_microbatches,
    )
    divisor = partitioning.batch_divisor(mesh, trainer.rules)
    if batch_size % divisor:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {divisor} "
                         f"batch shards of mesh {dict(mesh.shape)}")

    def dataset(config, *, training, stats=None):
        return pipeline.make_dataset(
            config, vocabulary, feature_lengths=feature_lengths, batch_size=batch_size,
            objective=objective, layout=layout, bidirectional_inputs=bidirectional_inputs,
            seed=seed, shuffle=training, repeat=training, stats=stats,
        )

    train_dataset, stats = dataset(train_data, training=True)
    train_iter = iter(train_dataset)
    ckpt = checkpoints.Checkpointer(
        os.path.join(model_dir, "checkpoints"), save_every=checkpoint_every,
        keep=keep_checkpoints,
    )
    restored = ckpt.restore_latest(trainer.abstract_state_with_shardings(), train_iter)
    if restored is None:
        state, start_step = trainer.create_state(seed), 0
        if init_from:
            state = state.replace(params=checkpoints.restore_params(
                init_from, trainer.abstract_state_with_shardings().params))
            _say(f"initialised parameters from {init_from}")
    else:
        start_step, state = restored
        _say(f"resumed from checkpoint at step {start_step} in {model_dir}")
    last_good_step = start_step if restored else None

    is_writer = jax.process_index() == 0
    writer = metrics_lib.MetricsWriter(model_dir, enabled=is_writer)
    flops = metrics_lib.model_flops_per_step(model, trainer.abstract_params, feature_lengths,
                                             batch_size)
    tokens_per_step = batch_size * sum(feature_lengths.values())
    peak, peak_source = metrics_lib.peak_flops_total(peak_flops_per_device)
    _say(f"model: {metrics_lib.count_params(trainer.abstract_params):,} parameters; "
         f"{flops / 1e12:.4f} TFLOPs per step; peak {peak / 1e12:.3f} TFLOP/s ({peak_source}); "
         f"mesh {dict(mesh.shape)}")

    bar = tqdm.tqdm(total=train_steps, initial=start_step, disable=not (progress_bar and is_writer),
                    dynamic_ncols=True, file=sys.stderr, desc="train")
    last = {}
    window_start, window_steps = time.perf_counter(), 0
    try:
        for step in range(start_step, train_steps):
            batch = pipeline.global_batch(next(train_iter), trainer.batch_sharding)
            state, step_metrics = trainer.train_step(state, batch)
            window_steps += 1
            done = step + 1
            # Two scalars per step: cheap, and a NaN never reaches a checkpoint.
            loss, param_norm = (float(x) for x in jax.device_get(
                (step_metrics["loss"], step_metrics["param_norm"])))
            if not (math.isfinite(loss) and math.isfinite(param_norm)):
                what = "loss" if not math.isfinite(loss) else "parameter norm after the update"
                raise NonFiniteLossError(
                    f"{what} is {loss if what == 'loss' else param_norm} at step {done}; "
                    "training stopped. "
                    + (f"The last good checkpoint is step {last_good_step} in {model_dir}."
                       if last_good_step is not None else "No checkpoint was saved.")
                )
            bar.update(1)
            if done % log_every == 0 or done == train_steps:
                elapsed = time.perf_counter() - window_start
                step_time = elapsed / window_steps
                values = {f"train/{k}": float(v) for k, v in jax.device_get(step_metrics).items()}
                values.update({
                    "perf/step_time_s": step_time,
                    "perf/tokens_per_second": tokens_per_step / step_time,
                    "perf/tflops_per_step": flops / 1e12,
                    "perf/mfu": flops / step_time / peak,
                })
                values.update({f"data/{k}": v for k, v in stats.snapshot().items()})
                writer.write(done, values)
                bar.set_postfix(loss=f"{values['train/loss']:.3f}",
                                mfu=f"{values['perf/mfu']:.1%}")
                last = values
                window_start, window_steps = time.perf_counter(), 0
            if eval_data is not None and (done % eval_every == 0 or done == train_steps):
                eval_values = evaluate(trainer, state.params, dataset(eval_data, training=False)[0],
                                       eval_batches)
                writer.write(done, {f"eval/{k}": v for k, v in eval_values.items()})
                bar.write(f"step {done}: train loss {last.get('train/loss', loss):.4f} | "
                          f"eval loss {eval_values['loss']:.4f} | "
                          f"eval perplexity {eval_values['perplexity']:.2f}")
                last.update({f"eval/{k}": v for k, v in eval_values.items()})
                window_start = time.perf_counter()  # evaluation time is not step time
            if ckpt.save(done, state, train_iter, force=done == train_steps):
                last_good_step = done
    finally:
        bar.close()
        ckpt.close()
        writer.close()
    if is_writer:
        metrics_lib.plot_losses(model_dir)
    return last


def evaluate(trainer: Trainer, params, eval_dataset, max_batches: int) -> dict[str, float]:
    """Loss, perplexity and token accuracy pooled over up to `max_batches` batches."""
    totals = None
    for index, local_batch in enumerate(eval_dataset):
        if index >= max_batches:
            break
        sums = jax.device_get(
            trainer.eval_step(params, pipeline.global_batch(local_batch, trainer.batch_sharding))
        )
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
    if totals is None:
        raise ValueError("the evaluation split produced no full batch; lower BATCH_SIZE")
    return summarize_eval(totals)


def check_arguments(*, train_steps, batch_size, feature_lengths, log_every, eval_every,
                    checkpoint_every):
    """The checks on `train`'s plain arguments; the CLI runs them before gin builds the
    vocabulary and data (see `config.check_arguments`)."""
    _check_positive(train_steps=train_steps, batch_size=batch_size, log_every=log_every,
                    eval_every=eval_every, checkpoint_every=checkpoint_every)
    if not isinstance(feature_lengths, Mapping) or not feature_lengths:
        raise ValueError(f"feature_lengths must be a dict like {{'targets': 512}}, "
                         f"got {feature_lengths!r}")
    _check_positive(**{f"feature_lengths[{k!r}]": v for k, v in feature_lengths.items()})


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _say(message: str) -> None:
    if jax.process_index() == 0:
        tqdm.tqdm.write(message, file=sys.stderr)

"""The loop skeleton every training job runs, and `train`, the pretraining job gin wires up.

`run` owns what every job needs and none should copy: resuming from the newest readable
checkpoint (with the data iterator's state), the progress bar, logging every `log_every` steps
(metrics.jsonl + TensorBoard, process 0 only), evaluation every `eval_every` steps,
checkpointing, and stopping with a clear error (keeping the last good checkpoint) when the
loss or the parameters stop being finite. A job contributes its state, its step function, its
batches and its evaluation:

    run = Run.open(model_dir, schedule)             # directory, checkpointer, metrics writer
    state, start = run.restore_or_init(abstract_state, init_fn, data_iterator)
    last = run.loop(state, start, step_fn, next_batch, data_iterator, evaluate=...)

`train` below is pretraining; instruction tuning, reward models, DPO and PPO call the same
three lines with their own step functions.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import tqdm
from etils import epath

from t5x_lite import checkpoints, metrics as metrics_lib, partitioning, paths
from t5x_lite.data import feature_converters as converters
from t5x_lite.data import objectives, pipeline
from t5x_lite.errors import InputError
from t5x_lite.models import model_format
from t5x_lite.trainer import Trainer, summarize_eval

logger = logging.getLogger(__name__)
StepFn = Callable[[Any, Any], tuple[Any, Mapping[str, jax.Array]]]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message says which checkpoint is still good."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When the loop logs, evaluates and checkpoints (every value a positive step count)."""

    train_steps: int
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    progress_bar: bool = True

    def __post_init__(self):
        _check_positive(train_steps=self.train_steps, log_every=self.log_every,
                        eval_every=self.eval_every, checkpoint_every=self.checkpoint_every)


@dataclasses.dataclass
class Run:
    """One model directory being trained: its checkpoints and its metrics."""

    model_dir: epath.Path
    schedule: Schedule
    checkpointer: checkpoints.Checkpointer
    writer: metrics_lib.MetricsWriter

    @classmethod
    def open(cls, model_dir: str, schedule: Schedule) -> "Run":
        path = paths.as_path(model_dir)  # file:// URLs; an unreachable bucket fails in one line
        if is_writer():
            path.mkdir(parents=True, exist_ok=True)
        ckpt = checkpoints.Checkpointer(str(path / "checkpoints"),
                                        save_every=schedule.checkpoint_every,
                                        keep=schedule.keep_checkpoints)
        return cls(path, schedule, ckpt, metrics_lib.MetricsWriter(str(path), enabled=is_writer()))

    def restore_or_init(self, abstract_state, init: Callable[[], Any], data_iterator=None):
        """(state, start step): the newest checkpoint's (data iterator restored in place), or
        `init()` at step 0 when the directory has none. An incompatible checkpoint raises."""
        restored = self.checkpointer.restore_latest(abstract_state, data_iterator)
        if restored is None:
            return init(), 0
        step, state = restored
        say(f"resumed from checkpoint at step {step} in {self.model_dir}")
        return state, step

    def loop(self, state, start_step: int, step_fn: StepFn, next_batch: Callable[[], Any],
             data_iterator=None, *, evaluate: Callable[[Any], Mapping[str, float]] | None = None,
             perf: Callable[[float], Mapping[str, float]] | None = None,
             finish: Callable[[Any], tuple[Any, Mapping[str, float]]] | None = None,
             ) -> dict[str, Any]:
        """Runs `step_fn` from `start_step` to the schedule's end; returns the last logged
        metrics. `step_fn(state, batch)` returns (state, metrics) with a scalar `loss` (and
        optionally `param_norm`); `evaluate(state)` returns metrics with a `loss`; `perf(step
        time)` adds figures (throughput, MFU) to each log line. `finish(state)` → (state,
        metrics) has the last word before the final checkpoint (a reward model's
        normalising bias), so what it changes is saved with the run."""
        schedule = self.schedule
        bar = tqdm.tqdm(total=schedule.train_steps, initial=start_step, dynamic_ncols=True,
                        disable=not (schedule.progress_bar and is_writer()), file=sys.stderr,
                        desc="train")
        last: dict[str, Any] = {}
        good_step = start_step if start_step else None
        watch = FiniteWatch()
        window_start, window_steps, waited = time.perf_counter(), 0, 0.0
        try:
            for step in range(start_step, schedule.train_steps):
                asked = time.perf_counter()
                batch = next_batch()
                waited += time.perf_counter() - asked
                state, step_metrics = step_fn(state, batch)
                done, window_steps = step + 1, window_steps + 1
                watch.update(step_metrics, done)
                bar.update(1)
                final = done == schedule.train_steps
                if (done % schedule.log_every == 0 or final or done % schedule.eval_every == 0
                        or self.checkpointer.would_save(done, force=final)):
                    watch.check(good_step, self.model_dir)  # never log or save past a NaN
                if done % schedule.log_every == 0 or done == schedule.train_steps:
                    step_time = (time.perf_counter() - window_start) / window_steps
                    values = {f"train/{k}": float(v)
                              for k, v in jax.device_get(dict(step_metrics)).items()}
                    values.update(perf(step_time) if perf else {})
                    values["perf/input_wait_s"] = waited / window_steps
                    self.writer.write(done, values)
                    bar.set_postfix(loss=f"{values['train/loss']:.3f}")
                    last, window_start, window_steps = values, time.perf_counter(), 0
                    waited = 0.0
                if evaluate is not None and (done % schedule.eval_every == 0
                                             or done == schedule.train_steps):
                    eval_values = {f"eval/{k}": v for k, v in evaluate(state).items()}
                    self.writer.write(done, eval_values)
                    if is_writer():
                        bar.write(_eval_line(done, last, eval_values))
                    last.update(eval_values)
                    window_start = time.perf_counter()  # evaluation time is not step time
                if finish is not None and done == schedule.train_steps:
                    state, finish_values = finish(state)
                    self.writer.write(done, finish_values)
                    last.update(finish_values)
                if self.checkpointer.save(done, state, data_iterator,
                                          force=done == schedule.train_steps):
                    good_step = done
        finally:
            bar.close()
            self.checkpointer.close()
            self.writer.close()
        if is_writer():
            metrics_lib.plot_losses(str(self.model_dir))
        return last


class FiniteWatch:
    """Watches the loss and every model's parameter norm (PPO: `value_param_norm` too) on
    the device: each step folds them into a record of the first step where one was not finite
    (one small asynchronous op, no transfer), and the host reads that record only when it
    logs, evaluates or saves, so the loop never waits for a step to finish; a NaN still
    never reaches a checkpoint or the log, and the error names the exact step."""

    def __init__(self):
        self.names: list[str] = []
        self.record = None  # (first bad step or 0, index into names, its value)

    def update(self, step_metrics: Mapping[str, jax.Array], step: int) -> None:
        self.names = [k for k in step_metrics if k == "loss" or k.endswith("param_norm")]
        if self.record is None:
            self.record = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                           jnp.zeros((), jnp.float32))
        self.record = _fold_finite(self.record, [step_metrics[k] for k in self.names], step)

    def check(self, good_step: int | None, model_dir) -> None:
        if self.record is None:
            return
        step, index, value = (x.item() for x in jax.device_get(self.record))
        if step:
            name = self.names[index]
            what = "loss" if name == "loss" else f"{name} (parameter norm) after the update"
            kept = (f"The last good checkpoint is step {good_step} in {model_dir}."
                    if good_step is not None else "No checkpoint was saved.")
            raise NonFiniteLossError(f"{what} is {value} at step {step}; training "
                                     f"stopped. {kept}")


@jax.jit
def _fold_finite(record, values, step):
    values = jnp.stack([jnp.asarray(v, jnp.float32) for v in values])
    bad = ~jnp.isfinite(values)
    index = jnp.argmax(bad).astype(jnp.int32)
    first = (record[0] == 0) & jnp.any(bad)
    return (jnp.where(first, jnp.asarray(step, jnp.int32), record[0]),
            jnp.where(first, index, record[1]), jnp.where(first, values[index], record[2]))


def _eval_line(step: int, last: Mapping[str, Any], eval_values: Mapping[str, float]) -> str:
    line = f"step {step}: train loss {last.get('train/loss', math.nan):.4f} | "
    if "eval/loss" not in eval_values:  # a job whose evaluation has no loss (PPO's scores)
        return line + " | ".join(f"{k} {v:.4f}" for k, v in sorted(eval_values.items()))
    line += f"eval loss {eval_values['eval/loss']:.4f}"
    if "eval/perplexity" in eval_values:
        line += f" | eval perplexity {eval_values['eval/perplexity']:.2f}"
    if "eval/accuracy" in eval_values:
        line += f" | eval accuracy {eval_values['eval/accuracy']:.4f}"
    if "eval/next_sentence_accuracy" in eval_values:
        line += f" | eval NSP accuracy {eval_values['eval/next_sentence_accuracy']:.4f}"
    return line


# ----------------------------------------------------------------------------- pretraining
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
    dcn_mesh_shape=None,
    logical_axis_rules=partitioning.DEFAULT_RULES,
    data_shards: int | None = None,
    objective=objectives.CausalLM(),
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
    loss_chunk_size: int | str | None = "auto",
    prefetch_batches: int = 2,
    peak_flops_per_device: float | None = None,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Pretrains `model` for `train_steps` steps in total; returns the last logged metrics.

    `feature_lengths` are T5X's TASK_FEATURE_LENGTHS: {'targets': L} for a decoder-only model,
    {'inputs': Li, 'targets': Lt} for an encoder-decoder. How rows start and whether a
    decoder-only model reads an objective's inputs bidirectionally (prefix LM) is the model's
    format (`config.format`, models/model_format.py), shared with scoring and decoding.
    `data_shards` (DATA_SHARDS) is how many independent record streams make up each global
    batch (partitioning.batch_pieces): fixed, the run's data is the same on any mesh and any
    number of hosts; None, one per host's batch shard. `loss_chunk_size` computes the logits
    that many positions at a time (losses.py; 'auto': for vocabularies of 32,000 or more).
    `prefetch_batches` training batches are built ahead in a thread while the device steps
    (0: none); `perf/input_wait_s` logs how long each step still waited for its batch.
    `init_from`, a params-only checkpoint (e.g. from `t5x-lite convert`) or a model directory
    (`initial_params`), gives a new run its initial parameters; it is ignored once
    `model_dir` has a checkpoint to resume from. `train_data` may also be an instruction
    mixture (`instruction_pipeline.InstructionData`): the objective is then unused.
    """
    check_arguments(train_steps=train_steps, batch_size=batch_size,
                    feature_lengths=feature_lengths, log_every=log_every,
                    eval_every=eval_every, checkpoint_every=checkpoint_every)
    fmt = model_format.of(model)
    _check_model_reads(model, vocabulary, feature_lengths)
    mesh = partitioning.make_mesh(mesh_shape, dcn_mesh_shape=dcn_mesh_shape)
    trainer = build_trainer(
        model, optimizer, learning_rate, mesh, logical_axis_rules, feature_lengths=feature_lengths,
        batch_size=batch_size, objective=objective, label_smoothing=label_smoothing, z_loss=z_loss,
        num_microbatches=num_microbatches, loss_chunk_size=loss_chunk_size)
    pieces, num_pieces = partitioning.batch_pieces(mesh, trainer.rules, data_shards)

    def dataset(config, *, training):
        return pipeline.make_sharded_dataset(
            config, vocabulary, pieces=pieces, num_pieces=num_pieces,
            feature_lengths=feature_lengths, batch_size=batch_size, objective=objective,
            model_format=fmt, seed=seed, shuffle=training, repeat=training,
            num_batches=None if training else eval_batches,
            prefetch_batches=prefetch_batches if training else 0)

    train_dataset, stats = dataset(train_data, training=True)
    train_iter = iter(train_dataset)
    run = Run.open(model_dir, Schedule(train_steps, log_every, eval_every, checkpoint_every,
                                       keep_checkpoints, progress_bar))

    def init():
        state = trainer.create_state(seed)
        if init_from:
            state = state.replace(params=initial_params(
                init_from, model, trainer.abstract_state_with_shardings().params))
            say(f"initialised parameters from {init_from}")
        return state

    state, start_step = run.restore_or_init(trainer.abstract_state_with_shardings(), init,
                                            train_iter)
    perf = _perf_figures(trainer, model, feature_lengths, batch_size, peak_flops_per_device,
                         stats, mesh)

    def evaluate_now(state):
        return evaluate(trainer, state.params, dataset(eval_data, training=False)[0])

    return run.loop(
        state, start_step, trainer.train_step,
        lambda: pipeline.global_batch(next(train_iter), trainer.batch_sharding, batch_size),
        train_iter, evaluate=evaluate_now if eval_data is not None else None, perf=perf)


def build_trainer(model: nn.Module, optimizer: Callable[..., optax.GradientTransformation],
                  learning_rate: optax.Schedule, mesh, logical_axis_rules, *,
                  feature_lengths: Mapping[str, int], batch_size: int,
                  objective=objectives.CausalLM(), label_smoothing: float = 0.0,
                  z_loss: float = 1e-4, num_microbatches: int = 1,
                  loss_chunk_size: int | str | None = "auto") -> Trainer:
    """The pretraining `Trainer` on `mesh` (state and steps abstract until used): what `train`
    runs and what `t5x-lite compile` compiles ahead of time for a TPU topology."""
    fmt = model_format.of(model)
    converters.check_layout(fmt.architecture, feature_lengths)
    sentence_pairs = _check_next_sentence(model, objective)
    trainer = Trainer(
        model, optimizer(learning_rate=learning_rate), learning_rate, mesh, logical_axis_rules,
        batch_shapes=converters.batch_shapes(fmt, feature_lengths, batch_size,
                                             sentence_pairs=sentence_pairs),
        label_smoothing=label_smoothing, z_loss=z_loss, num_microbatches=num_microbatches,
        loss_chunk_size=loss_chunk_size,
    )
    divisor = partitioning.batch_divisor(mesh, trainer.rules)
    if batch_size % divisor:
        raise InputError(f"batch_size={batch_size} (BATCH_SIZE) must be a multiple of the "
                         f"{divisor} batch shards of mesh {dict(mesh.shape)} (MESH_SHAPE)")
    return trainer


def initial_params(init_from: str, model: nn.Module, abstract_params):
    """Parameters a new run starts from: a params-only checkpoint (`convert`'s `params/`), or
    a model directory (a pretraining run's newest checkpoint, or an import), placed with the
    shardings `abstract_params` carry. Fine-tuning (instruction tuning, reward models)
    starts from pretrained weights this way."""
    directory = paths.as_path(init_from)
    if not any((directory / name).is_dir() for name in ("checkpoints", "params")):
        return checkpoints.restore_params(init_from, abstract_params)
    from t5x_lite.interop import convert  # knows both layouts of a model directory

    _, params = convert.load_model(init_from, model)
    return partitioning.put_global(params, jax.tree.map(lambda a: a.sharding, abstract_params))


def _perf_figures(trainer, model, feature_lengths, batch_size, peak_flops_per_device, stats,
                  mesh) -> Callable[[float], dict[str, float]]:
    """Logs the model's size and FLOPs once; returns the per-log-line perf and data figures."""
    flops = metrics_lib.model_flops_per_step(model, trainer.abstract_params, feature_lengths,
                                             batch_size)
    tokens_per_step = batch_size * sum(feature_lengths.values())
    peak, peak_source = metrics_lib.peak_flops_total(peak_flops_per_device)
    say(f"model: {metrics_lib.count_params(trainer.abstract_params):,} parameters; "
        f"{flops / 1e12:.4f} TFLOPs per step; peak {peak / 1e12:.3f} TFLOP/s ({peak_source}); "
        f"mesh {dict(mesh.shape)}")

    def figures(step_time: float) -> dict[str, float]:
        values = {"perf/step_time_s": step_time,
                  "perf/tokens_per_second": tokens_per_step / step_time,
                  "perf/tflops_per_step": flops / 1e12,
                  "perf/mfu": flops / step_time / peak}
        values.update({f"data/{k}": v for k, v in stats.snapshot().items()})
        return values

    return figures


def _check_model_reads(model, vocabulary, feature_lengths) -> None:
    """Errors, before anything is built, for data the model could not read: ids past its
    embedding table, rows past a learned position table."""
    model_vocab = model.config.vocab_size
    if model_vocab < vocabulary.vocab_size:
        raise InputError(f"vocab_size={model_vocab} of the model is smaller than the "
                         f"vocabulary's {vocabulary.vocab_size} ids (pieces + extra ids)")
    limit = model_format.max_positions(model)
    longest = max(feature_lengths.values())
    if limit is not None and longest > limit:
        raise InputError(f"feature length {longest} (TASK_FEATURE_LENGTHS) exceeds the "
                         f"model's learned position table (max_length={limit})")


def _check_next_sentence(model, objective) -> bool:
    """Whether the run trains BERT's next-sentence prediction: the objective's pairs and the
    model's head come together or not at all."""
    pairs = bool(getattr(objective, "next_sentence", False))
    head = bool(getattr(model.config, "next_sentence_head", False))
    if pairs != head:
        raise InputError(
            f"MaskedLM.next_sentence={pairs} but EncoderConfig.next_sentence_head={head}: "
            "next-sentence prediction needs both the sentence pairs and the model's head")
    return pairs


def evaluate(trainer: Trainer, params, eval_dataset) -> dict[str, float]:
    """Loss, perplexity and token accuracy pooled over a finite dataset made with
    `num_batches=N`: every process runs exactly N steps (a shard that runs out feeds empty,
    zero-weight batches), so none leaves the collective early."""
    totals = None
    for local_batch in eval_dataset:
        sums = jax.device_get(trainer.eval_step(
            params, pipeline.global_batch(local_batch, trainer.batch_sharding,
                                          trainer.batch_size)))
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
    if totals is None or totals["tokens"] == 0:
        raise ValueError("the evaluation split produced no tokens; lower BATCH_SIZE or "
                         "check EVAL_DATA")
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


def is_writer() -> bool:
    """Only process 0 writes shared files (metrics, plots, configs)."""
    return jax.process_index() == 0


def say(message: str) -> None:
    if is_writer():
        tqdm.tqdm.write(message, file=sys.stderr)

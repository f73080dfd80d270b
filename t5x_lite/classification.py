"""Fine-tuning an encoder for sequence classification (`t5x-lite train_classifier`), and the
fine-tuned classifier's predictions for `t5x-lite eval`.

BERT's recipe (Devlin et al. 2019, §4.1, appendix A.3): the pretrained encoder with one new
layer on a pooled representation (heads.ClassifierHead: the first position through BERT's
pooler, or the mean over the row), every weight fine-tuned on the examples' cross entropy;
they tune for 2-4 epochs at 2e-5..5e-5 with batch 16/32 and dropout 0.1.

The task is a classification task of the instruction suite whose options are one fixed label
set, the same for every example (`task_labels`). An example reads exactly the text rank
classification scores the decoder and T5 on (task_evaluation.render_cases: the template's
inputs, ending with EOS), in every evaluation template, so the three architectures are
compared on the same text. Our vocabularies have no [CLS]: 'first' pooling reads the row's
first token, which fine-tuning has to make the summary BERT's [CLS] is; 'mean' needs no such
token and is runs/classifier.gin's default.

MODEL_DIR/classifier.json records the task, its labels and the head's settings, so that
`t5x-lite eval --tasks=TASK` on the run rebuilds the head (`read_head`) and reports accuracy
per template and split exactly as it reports rank classification.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t5x_lite import embeddings, partitioning, paths, task_evaluation, train_loop
from t5x_lite.data.tasks import task as task_lib
from t5x_lite.errors import InputError
from t5x_lite.models import heads, model_format
from t5x_lite.rlhf import jobs
from t5x_lite.trainer import Trainer

HEAD_CONFIG = "classifier.json"
FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
PADDING = {name: 0 for name in (*FEATURES, "labels")}  # segment 0: weighs nothing


# ------------------------------------------------------------------------------ data
def task_labels(task, data_dir=None) -> tuple[str, ...]:
    """The task's label set: its options, which must be the same for every example (a
    multiple-choice task whose options change per example has no fixed classes)."""
    if task.metric != "rank_classification":
        raise InputError(f"task {task.name!r} is scored by {task.metric}, not by choosing "
                         "among options: it has no classes")
    records = task.records("train", data_dir)
    for index in range(len(records)):
        example = task.example(records[index])
        if example is not None:
            return tuple(example["options"])
    raise InputError(f"task {task.name!r} has no usable training example")


def encode(task, split: str, vocabulary, eos_id: int, labels: Sequence[str], *,
           max_length: int, max_examples: int, data_dir=None, seed: int = 0
           ) -> dict[str, np.ndarray]:
    """The split's first `max_examples` examples in every evaluation template, as padded
    rows of `max_length` tokens (`FEATURES`, segment 1 on the text) and their label index."""
    cases = task_evaluation.render_cases(task, split, vocabulary, eos_id, data_dir=data_dir,
                                         max_examples=max_examples,
                                         max_inputs_length=max_length, seed=seed)
    if not cases:
        raise InputError(f"task {task.name!r}: no {split} examples")
    tokens = np.zeros((len(cases), max_length), np.int32)
    segment_ids = np.zeros_like(tokens)
    label_ids = np.zeros((len(cases),), np.int32)
    for row, case in enumerate(cases):
        if case["option_names"] != list(labels):
            raise InputError(f"task {task.name!r}: an example's options "
                             f"{case['option_names']} are not the label set {list(labels)}")
        inputs = case["inputs"]
        tokens[row, : len(inputs)] = inputs
        segment_ids[row, : len(inputs)] = 1
        label_ids[row] = case["correct"][0]
    positions = np.where(segment_ids > 0, np.arange(max_length)[None], 0).astype(np.int32)
    return {"encoder_input_tokens": tokens, "encoder_segment_ids": segment_ids,
            "encoder_positions": positions, "labels": label_ids}


# ------------------------------------------------------------------------------ loss
class ClassificationLoss:
    """Cross entropy of the class logits, averaged over the batch's real examples (a padding
    row, segment 0 at its first position, weighs 0); a `Trainer` loss (trainer.py)."""

    denominator = "examples"

    def init_inputs(self, module, batch):
        return {name: batch[name] for name in FEATURES}

    def sums(self, module, params, batch, dropout_rng):
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        logits = module.apply({"params": params}, **self.init_inputs(module, batch),
                              deterministic=dropout_rng is None, rngs=rngs)
        labels = batch["labels"]
        weights = (batch["encoder_segment_ids"][:, 0] > 0).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        sums = {"loss": jnp.sum(loss * weights), "correct": jnp.sum(correct * weights),
                "examples": jnp.sum(weights)}
        return sums["loss"], sums

    @staticmethod
    def normalise(sums):
        examples = jnp.maximum(sums["examples"], 1.0)
        return {"loss": sums["loss"] / examples, "accuracy": sums["correct"] / examples,
                "examples": sums["examples"]}


# ------------------------------------------------------------------------ the head
def head_settings(task: str, labels: Sequence[str], pooling: str,
                  dropout_rate: float) -> dict[str, Any]:
    return {"task": task, "labels": list(labels), "pooling": pooling,
            "dropout_rate": dropout_rate}


def build_head(model, settings: Mapping[str, Any]) -> heads.ClassifierHead:
    if not model_format.of(model).encoder_only:
        raise InputError(f"a classifier head needs an encoder-only model (BERT, RoBERTa), not "
                         f"a {model_format.of(model).architecture!r} one: the decoder and T5 "
                         "classify by rank classification (`t5x-lite eval --tasks`)")
    labels = tuple(settings["labels"])
    return heads.ClassifierHead(model, num_classes=len(labels), pooling=settings["pooling"],
                                dropout_rate=settings["dropout_rate"], labels=labels)


def read_head(model, model_dir: str, task_names: Sequence[str] | None = None
              ) -> heads.ClassifierHead | None:
    """The classifier a `train_classifier` run in MODEL_DIR fine-tuned on `model`'s trunk, or
    None when MODEL_DIR holds a language model. Its classes are one task's labels: asked to
    evaluate other `task_names`, it is an error."""
    path = paths.as_path(model_dir) / HEAD_CONFIG
    if not path.exists():
        return None
    settings = json.loads(path.read_text())
    if task_names is not None and list(task_names) != [settings["task"]]:
        raise InputError(f"{model_dir} holds a classifier of task {settings['task']!r}: "
                         f"evaluate it with --tasks={settings['task']}, not {list(task_names)}")
    return build_head(model, settings)


def _record_head(model_dir: str, settings: Mapping[str, Any]) -> None:
    """Writes classifier.json (process 0, atomically); a run resumed with another task,
    label set or head is an error, never a silent restart."""
    path = paths.as_path(model_dir) / HEAD_CONFIG
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != dict(settings):
            raise InputError(f"{path} records {recorded}, but this run asks for "
                             f"{dict(settings)}: use another MODEL_DIR")
    elif train_loop.is_writer():
        paths.atomic_write_text(path, json.dumps(dict(settings), indent=1))


@functools.lru_cache(maxsize=8)
def _logits_fn(head, out_sharding):
    def forward(params, batch):
        return head.apply({"params": params}, encoder_input_tokens=batch["tokens"],
                          encoder_segment_ids=batch["segment_ids"],
                          encoder_positions=batch["positions"])

    return jax.jit(forward, out_shardings=out_sharding)


def predict(head: heads.ClassifierHead, params, rows: Sequence[Sequence[int]], *,
            batch_size: int = 32, mesh=None, rules=None) -> np.ndarray:
    """Class logits [len(rows), num_classes] of token-id rows, each read whole."""
    if not rows:
        return np.zeros((0, head.num_classes), np.float32)
    init = {name: jnp.zeros((1, 2), jnp.int32) for name in FEATURES}
    return embeddings.over_rows(functools.partial(_logits_fn, head), head, params, rows,
                                init, batch_size=batch_size, mesh=mesh, rules=rules)


# ---------------------------------------------------------------------------- the job
def train_classifier(
    *,
    model_dir: str,
    model,
    vocabulary,
    task: str,
    optimizer: Callable[..., optax.GradientTransformation],
    learning_rate: optax.Schedule,
    train_steps: int,
    batch_size: int,
    max_length: int = 128,
    pooling: str = "mean",
    dropout_rate: float = 0.1,
    init_from: str | None = None,
    data_dir: str | None = None,
    max_train_examples: int = 100_000,
    max_eval_examples: int = 200,
    mesh_shape=(-1, 1, 1),
    dcn_mesh_shape=None,
    logical_axis_rules=partitioning.DEFAULT_RULES,
    seed: int = 0,
    log_every: int = 10,
    eval_every: int = 100,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 3,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Fine-tunes a classifier on `model`'s trunk (from `init_from`, a pretraining run or an
    import) for `task`; returns the last logged metrics, the dev split's accuracy among them."""
    fmt = model_format.of(model)
    model_format.check_vocabulary(fmt, vocabulary)
    task_obj = task_lib.get(task)
    labels = task_labels(task_obj, data_dir)
    settings = head_settings(task_obj.name, labels, pooling, dropout_rate)
    head = build_head(model, settings)
    limit = model_format.max_positions(model)
    if limit is not None and max_length > limit:
        raise InputError(f"max_length={max_length} exceeds the model's {limit} positions")
    arrays = {split: encode(task_obj, split, vocabulary, fmt.eos_id, labels,
                            max_length=max_length, data_dir=data_dir, seed=seed,
                            max_examples=max_train_examples if split == "train"
                            else max_eval_examples)
              for split in ("train", "dev")}
    train_loop.say(f"classifier on {task_obj.name}: labels {list(labels)}; "
                   f"{len(arrays['train']['labels'])} training rows, "
                   f"{len(arrays['dev']['labels'])} dev rows (every evaluation template)")

    mesh = partitioning.make_mesh(mesh_shape, dcn_mesh_shape=dcn_mesh_shape)
    jobs.check_batch(batch_size, mesh, logical_axis_rules)
    trainer = Trainer(head, optimizer(learning_rate=learning_rate), learning_rate, mesh,
                      logical_axis_rules, loss=ClassificationLoss(),
                      batch_shapes=jobs.batch_shapes(arrays["train"], batch_size))
    iterator, next_batch = jobs.train_batches(arrays["train"], mesh, trainer.rules,
                                              batch_size=batch_size, seed=seed)
    run = train_loop.Run.open(model_dir, train_loop.Schedule(
        train_steps, log_every, eval_every, checkpoint_every, keep_checkpoints, progress_bar))
    _record_head(model_dir, settings)
    state, start = run.restore_or_init(
        trainer.abstract_state_with_shardings(),
        lambda: jobs.with_initial_trunk(trainer.create_state(seed), init_from, model, mesh,
                                        trainer.rules),
        iterator)
    return run.loop(state, start, trainer.train_step, next_batch, iterator,
                    evaluate=lambda s: jobs.evaluate(trainer, s.params, arrays["dev"], PADDING))


def check_arguments(*, train_steps, batch_size, max_length=128, pooling="mean",
                    log_every=10, eval_every=100, checkpoint_every=100):
    """`train_classifier`'s plain arguments, checked before gin builds data and models."""
    train_loop._check_positive(train_steps=train_steps, batch_size=batch_size,
                               max_length=max_length, log_every=log_every,
                               eval_every=eval_every, checkpoint_every=checkpoint_every)
    if pooling not in ("first", "mean"):
        raise ValueError(f"pooling must be 'first' or 'mean', got {pooling!r}")

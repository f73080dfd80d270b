"""Instruction-tuning data: a mixture of tasks → templated, tokenized examples → packed rows.

    per task: its split's record indices [shard::count] → shuffle(seed) → repeat
              → example (preprocessor; a bad record skipped and counted)
              → template (round-robin over the stream, as FLAN assigns them) + format (drawn
                by rate; few-shot exemplars drawn from the train split, never the query)
              → tokens: inputs + EOS, targets + EOS           (`encode_pair`)
    tasks → grain's `MapDataset.mix` at the mixture's shares (concatenated when finite)
          → `pipeline.pack_and_batch`: packed rows with segment ids, loss on targets only

The row layout is the model's (`ModelFormat`): a decoder-only model reads inputs + targets as
one sequence whose inputs are a prefix with zero loss weight (seqio's PrefixLM converter with
`loss_on_targets_only`), an encoder-decoder reads the inputs in its encoder. `encode_pair` is
the one place an (inputs, targets) text pair becomes ids, for training and for evaluation
(`task_evaluation.py`), so a model is scored exactly as it was tuned.

grain mixes by position, so a task whose preprocessor skips a fraction of its records (SNLI's
unlabelled pairs) is seen that fraction less often than its share says.

An example longer than the row keeps the end of its inputs (where FLAN's templates put the
question and the options) and the start of its targets; it is counted as `truncated`.
Everything is a function of (seed, shard, position), so the iterator state saved with each
checkpoint resumes the stream exactly.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Mapping, Sequence

import grain
import numpy as np

from t5x_lite.data import feature_converters as converters
from t5x_lite.data import pipeline
from t5x_lite.data.tasks import formats as formats_lib
from t5x_lite.data.tasks import mixtures, task as task_lib
from t5x_lite.models.model_format import ModelFormat, check_vocabulary

EXEMPLAR_TRIES = 4  # draws per exemplar slot before giving up on a skipped record


def encode_pair(vocabulary, inputs: str, targets: str, eos_id: int) -> tuple[list, list]:
    """Token ids of an instruction example: inputs + EOS, targets + EOS (seqio's
    `append_eos` on both features)."""
    return vocabulary.encode(inputs) + [eos_id], vocabulary.encode(targets) + [eos_id]


def fit(inputs: Sequence[int], targets: Sequence[int], fmt: ModelFormat,
        feature_lengths: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Cuts an example to the row (module docstring); returns (inputs, targets, truncated)."""
    inputs, targets = np.asarray(inputs, np.int32), np.asarray(targets, np.int32)
    if fmt.architecture == "decoder":
        length = feature_lengths["targets"]
        if len(inputs) + len(targets) <= length:
            return inputs, targets, False
        targets = targets[: max(length - len(inputs), length // 2)]
        return inputs[len(inputs) - (length - len(targets)):], targets, True
    cut_inputs = inputs[max(len(inputs) - feature_lengths["inputs"], 0):]
    cut_targets = targets[: feature_lengths["targets"]]
    return cut_inputs, cut_targets, len(cut_inputs) < len(inputs) or \
        len(cut_targets) < len(targets)


@dataclasses.dataclass(frozen=True)
class InstructionData:
    """What an instruction-tuning job reads: a mixture, a split, the formats mixed by rate
    ((Format, rate) pairs), and the data directory of TFDS-backed tasks (TASKS_DATA_DIR)."""

    mixture: mixtures.Mixture
    split: str = "train"
    formats: tuple = ((formats_lib.ZERO_SHOT, 1.0),)
    data_dir: str | None = None
    max_examples_per_task: int | None = None

    def num_examples(self, task_name: str) -> int:
        count = len(task_lib.get(task_name).records(self.split, self.data_dir))
        return count if self.max_examples_per_task is None else min(
            count, self.max_examples_per_task)

    def shares(self) -> dict[str, float]:
        return self.mixture.shares(self.num_examples)

    def examples(self, vocabulary, eos_id: int, *, seed: int = 0, shuffle: bool = True,
                 repeat: bool = True, shard_index: int = 0, shard_count: int = 1,
                 stats: pipeline.RecordStats | None = None) -> grain.MapDataset:
        """This shard's tokenized examples, {"task", "inputs", "targets"}, mixed at the
        mixture's shares by grain (`MapDataset.mix`; concatenated when not repeating)."""
        stats = stats if stats is not None else pipeline.RecordStats()
        shares = self.shares()
        streams = []
        for name in shares:
            task = task_lib.get(name)
            indices = grain.MapDataset.range(self.num_examples(name))[shard_index::shard_count]
            task_seed = pipeline.shard_seed(seed, zlib.crc32(name.encode("utf-8")))
            if shuffle:
                indices = indices.shuffle(seed=task_seed)
            if repeat:
                indices = indices.repeat()
            renderer = _Renderer(task, self, vocabulary, eos_id, task_seed, stats)
            streams.append(indices.map_with_index(renderer).filter(lambda e: e is not None))
        if repeat:
            return grain.MapDataset.mix(streams, weights=list(shares.values()))
        return grain.MapDataset.concatenate(streams)

    def make_dataset(self, vocabulary, *, feature_lengths: Mapping[str, int], batch_size: int,
                     model_format: ModelFormat, seed: int = 0, shuffle: bool = True,
                     repeat: bool = True, shard_index: int | None = None,
                     shard_count: int | None = None, num_batches: int | None = None,
                     stats: pipeline.RecordStats | None = None, objective=None):
        """This shard's batches, as `pipeline.make_dataset` makes them (same signature; the
        objective is ignored: an instruction example is its own inputs and targets)."""
        del objective
        fmt = model_format
        check_vocabulary(fmt, vocabulary)
        converters.check_layout(fmt.architecture, feature_lengths)
        shard_index, shard_count, local_batch = pipeline.shard_layout(
            batch_size, shard_index, shard_count)
        stats = stats if stats is not None else pipeline.RecordStats()
        local_seed = pipeline.shard_seed(seed, shard_index)
        examples = self.examples(vocabulary, fmt.eos_id, seed=local_seed, shuffle=shuffle,
                                 repeat=repeat, shard_index=shard_index,
                                 shard_count=shard_count, stats=stats)

        def packable(example):
            inputs, targets, truncated = fit(example["inputs"], example["targets"], fmt,
                                             feature_lengths)
            if truncated:
                stats.add("truncated")
            return converters.to_packable({"inputs": inputs, "targets": targets}, fmt,
                                          feature_lengths)[0]

        return pipeline.pack_and_batch(examples.map(packable).to_iter_dataset(), fmt,
                                       feature_lengths, local_batch, seed=local_seed,
                                       shuffle=shuffle, repeat=repeat,
                                       num_batches=num_batches), stats


class _Renderer:
    """(position in the task's stream, record index) → a packable example, or None."""

    def __init__(self, task, data: InstructionData, vocabulary, eos_id: int, seed: int,
                 stats: pipeline.RecordStats):
        self.task, self.vocabulary, self.eos_id = task, vocabulary, eos_id
        self.seed, self.stats = seed, stats
        self.records = task.records(data.split, data.data_dir)
        self.train_records = (self.records if data.split == "train"
                              else task.records("train", data.data_dir))
        self.formats = [f for f, _ in data.formats]
        rates = np.asarray([r for _, r in data.formats], np.float64)
        self.format_probs = rates / rates.sum()

    def __call__(self, position: int, record_index: int):
        self.stats.add("records")
        example = self._example(self.records, int(record_index))
        if example is None:
            return None
        rng = np.random.default_rng([self.seed, position])
        fmt = self.formats[rng.choice(len(self.formats), p=self.format_probs)]
        templates = (range(len(self.task.templates)) if fmt.instructions == "template"
                     else self.task.eval_template_indices)
        template = list(templates)[position % len(templates)]
        exemplars = self._exemplars(rng, fmt.shots, exclude=int(record_index))
        rendered = formats_lib.render(self.task, example, fmt, template, exemplars,
                                      count_tokens=lambda s: len(self.vocabulary.encode(s)))
        if rendered is None:
            self.stats.add("skipped_no_exemplar")
            return None
        inputs, targets = encode_pair(self.vocabulary, *rendered, self.eos_id)
        return {"task": self.task.name, "inputs": inputs, "targets": targets}

    def _example(self, records, index: int):
        example = usable_example(self.task, records[index])
        if example is MALFORMED:
            self.stats.add("skipped_malformed")
            return None
        if example is None:
            self.stats.add("skipped_by_preprocessor")
        return example

    def _exemplars(self, rng: np.random.Generator, shots: int, exclude: int) -> list:
        exclude = exclude if self.train_records is self.records else -1
        return draw_exemplars(self.task, self.train_records, rng, shots, exclude)


def draw_exemplars(task, train_records, rng: np.random.Generator, shots: int,
                   exclude: int = -1) -> list:
    """`shots` train examples drawn at random (records the preprocessor skips are passed
    over), never the record at index `exclude` (the query's own, when it is a train one)."""
    pool = len(train_records)
    chosen: list = []
    seen = {exclude}
    for _ in range(shots * EXEMPLAR_TRIES):
        if len(chosen) == shots or len(seen) >= pool:
            break
        index = int(rng.integers(pool))
        if index in seen:
            continue
        seen.add(index)
        example = usable_example(task, train_records[index])
        if example is not None and example is not MALFORMED:
            chosen.append(example)
    return chosen


MALFORMED = object()  # a record the preprocessor could not read


def usable_example(task, record):
    """The task's example of `record`: None when the preprocessor skips it, MALFORMED when
    the record lacks what it needs (missing or mistyped features)."""
    try:
        return task.example(record)
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, IndexError):
        return MALFORMED

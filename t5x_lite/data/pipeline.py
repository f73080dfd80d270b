"""The input pipeline: TFDS source → grain → tokens → objective → packed rows → global batch.

    source (tfds.data_source, array_record; no TensorFlow)
      → this process's records ([process_index::process_count], disjoint across hosts)
      → shuffle(seed), repeat                      (training only)
      → decode + tokenize (bad records skipped and counted in `RecordStats`)
      → cut documents into chunks of the objective's raw length (counted)
      → objective(tokens, seed)                     (pure; see objectives.py)
      → grain's FirstFitPackIterDataset              (segment ids + positions per row)
      → T5X feature names per architecture           (feature_converters.py)
      → batch of this process's rows
      → `global_batch`: one jax.Array over the mesh's batch axes

The grain iterator's state is tiny (record index + packer state) and is saved with every
checkpoint, so a resumed run sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import threading
from typing import Any, Callable, Mapping

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from t5x_lite.data import feature_converters as converters
from t5x_lite.data import objectives, python_docs
from t5x_lite.data import vocab as vocab_lib

Objective = Callable[[np.ndarray, int], dict[str, np.ndarray]]


def default_data_dir() -> str:
    """Where TFDS datasets and vocabularies are cached unless gin says otherwise."""
    return os.environ.get("T5X_LITE_DATA_DIR") or os.path.expanduser("~/.cache/t5x_lite")


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Which TFDS dataset to read: any prepared TFDS dataset works (e.g. 'c4/en:3.1.0')."""

    name: str = "python_docs"
    split: str = "train"
    data_dir: str | None = None
    text_feature: str = "text"

    def resolved_data_dir(self) -> str:
        return self.data_dir or default_data_dir()

    def source(self):
        """A random-access grain source over the split's records (dicts of bytes/arrays)."""
        data_dir = self.resolved_data_dir()
        if self.name.split(":")[0] == "python_docs":
            return python_docs.data_source(self.split, data_dir)
        return tfds.data_source(self.name, split=self.split, data_dir=data_dir)

    def texts(self, limit: int | None = None):
        """Yields decoded texts in order (vocabulary training, corpus statistics)."""
        source = self.source()
        count = len(source) if limit is None else min(limit, len(source))
        for index in range(count):
            value = source[index].get(self.text_feature, b"")
            yield value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RecordStats:
    """Thread-safe counters of what the pipeline dropped or altered (reported as metrics)."""

    KEYS = ("records", "skipped_empty", "skipped_non_utf8", "skipped_malformed", "split_long",
            "truncated")

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.KEYS, 0)

    def add(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[key] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def tokenize_record(record: Mapping[str, Any], *, vocabulary: vocab_lib.Vocabulary,
                    text_feature: str, stats: RecordStats) -> np.ndarray | None:
    """One record → token ids, or None (counted) for a record that can't be used."""
    stats.add("records")
    try:
        value = record[text_feature]
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        stats.add("skipped_non_utf8")
        return None
    except (KeyError, TypeError, AttributeError):
        stats.add("skipped_malformed")
        return None
    if not text.strip():
        stats.add("skipped_empty")
        return None
    return np.asarray(vocabulary.encode(text), np.int32)


class ChunkTokens(grain.experimental.FlatMapTransform):
    """Cuts a document's tokens into chunks of the objective's raw length. Nothing is dropped
    below `max_fan_out` chunks; beyond that the tail is cut. Counted as `split_long`."""

    def __init__(self, length: int, max_fan_out: int, stats: RecordStats):
        self.length, self.max_fan_out, self.stats = length, max_fan_out, stats

    def flat_map(self, tokens):
        if len(tokens) <= self.length:
            return [tokens]
        self.stats.add("split_long")
        chunks = min(-(-len(tokens) // self.length), self.max_fan_out)
        return [tokens[i * self.length : (i + 1) * self.length] for i in range(chunks)]


def bind_vocabulary(objective: Objective, vocabulary: vocab_lib.Vocabulary) -> Objective:
    """Fills an objective's `eos_id` / `vocab_size` / `extra_ids` fields from the vocabulary."""
    if dataclasses.is_dataclass(objective):
        fields = {f.name for f in dataclasses.fields(objective)}
        values = {"eos_id": vocabulary.eos_id, "vocab_size": vocabulary.vocab_size,
                  "extra_ids": vocabulary.extra_ids}
        return dataclasses.replace(objective, **{k: v for k, v in values.items() if k in fields})
    return objective


def make_dataset(
    config: DatasetConfig,
    vocabulary: vocab_lib.Vocabulary,
    *,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    objective: Objective = objectives.CausalLM(),
    layout: str = "decoder",
    bidirectional_inputs: bool = True,
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    max_chunks_per_document: int = 64,
    stats: RecordStats | None = None,
) -> tuple[grain.IterDataset, RecordStats]:
    """This process's share of `batch_size` packed rows per step, as a grain IterDataset."""
    converters.check_layout(layout, feature_lengths)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} must be divisible by {process_count} processes")
    local_batch = batch_size // process_count
    stats = stats or RecordStats()
    objective = bind_vocabulary(objective, vocabulary)
    raw_length = objective.raw_length(feature_lengths)

    dataset = grain.MapDataset.source(config.source())[process_index::process_count]
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(functools.partial(
        tokenize_record, vocabulary=vocabulary, text_feature=config.text_feature, stats=stats,
    )).filter(lambda tokens: tokens is not None)
    iter_dataset = grain.experimental.FlatMapIterDataset(
        dataset.to_iter_dataset(), ChunkTokens(raw_length, max_chunks_per_document, stats))

    def apply_objective(tokens, rng: np.random.Generator):
        example = objective(tokens, int(rng.integers(2**31 - 1)))
        packable, truncated = converters.to_packable(example, layout, feature_lengths,
                                                     vocabulary.eos_id)
        if truncated:
            stats.add("truncated")
        return packable

    iter_dataset = iter_dataset.random_map(apply_objective, seed=seed)
    iter_dataset = grain.experimental.FirstFitPackIterDataset(
        iter_dataset,
        length_struct=converters.packing_lengths(layout, feature_lengths),
        num_packing_bins=local_batch,
        seed=seed,
        shuffle_bins=shuffle,
    )
    iter_dataset = iter_dataset.map(
        functools.partial(converters.convert, layout=layout,
                          bidirectional_inputs=bidirectional_inputs))
    return iter_dataset.batch(local_batch, drop_remainder=True), stats


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding):
    """Assembles every process's rows into global jax.Arrays laid out by `sharding`."""
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def unigram_entropy(vocabulary: vocab_lib.Vocabulary, texts) -> float:
    """Entropy (nats/token) of the corpus's unigram token distribution, EOS included: the loss
    of a model that ignores context, the bar a trained LM must clear."""
    counts = np.zeros(vocabulary.vocab_size, np.int64)
    for text in texts:
        ids = vocabulary.encode(text) + [vocabulary.eos_id]
        counts += np.bincount(ids, minlength=vocabulary.vocab_size)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


def load_vocabulary(
    data_dir: str | None = None,
    vocab_size: int = 8192,
    extra_ids: int = 100,
    sentencepiece_model: str | None = None,
    train_data: DatasetConfig = DatasetConfig(),
) -> vocab_lib.Vocabulary:
    """The run's vocabulary: a given SentencePiece `.model` (e.g. T5's), or one trained once
    on `train_data` and cached under `data_dir`."""
    return vocab_lib.get_or_train_vocabulary(
        data_dir or default_data_dir(),
        vocab_size=vocab_size,
        extra_ids=extra_ids,
        sentencepiece_model=sentencepiece_model,
        texts_fn=train_data.texts,
    )

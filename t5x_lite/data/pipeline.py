"""The input pipeline: TFDS source → grain → tokens → objective → packed rows → global batch.

    source (tfds.data_source, array_record; no TensorFlow)
      → this process's records ([process_index::process_count], disjoint across hosts)
      → shuffle(seed), repeat                      (training only)
      → decode + tokenize (bad records skipped and counted in `RecordStats`)
      → objective(tokens, seed)                     (pure; see objectives.py)
      → split over-long examples into row-sized chunks (counted)
      → grain's FirstFitPackIterDataset              (segment ids + positions per row)
      → T5X feature names, autoregressive inputs, loss weights
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

from t5x_lite.data import objectives, python_docs
from t5x_lite.data import vocab as vocab_lib

Objective = Callable[..., dict[str, np.ndarray]]


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

    KEYS = ("records", "skipped_empty", "skipped_non_utf8", "skipped_malformed", "split_long")

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.KEYS, 0)

    def add(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[key] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def tokenize_record(
    index: int,
    record: Mapping[str, Any],
    *,
    vocabulary: vocab_lib.Vocabulary,
    text_feature: str,
    objective: Objective,
    seed: int,
    stats: RecordStats,
) -> dict[str, np.ndarray] | None:
    """One record → objective features, or None (counted) for a record that can't be used."""
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
    tokens = np.asarray(vocabulary.encode(text), np.int32)
    example_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    return objective(tokens, example_seed)


class SplitLongExamples(grain.experimental.FlatMapTransform):
    """Cuts examples longer than a row into row-sized chunks (nothing is dropped below
    `max_fan_out` chunks; beyond that the tail is cut). Counted as `split_long`."""

    def __init__(self, length: int, max_fan_out: int, stats: RecordStats):
        self.length, self.max_fan_out, self.stats = length, max_fan_out, stats

    def flat_map(self, example):
        size = max(len(v) for v in example.values())
        if size <= self.length:
            return [example]
        self.stats.add("split_long")
        chunks = min(-(-size // self.length), self.max_fan_out)
        return [
            {k: v[i * self.length : (i + 1) * self.length] for k, v in example.items()}
            for i in range(chunks)
        ]


def to_decoder_features(packed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Packed `targets` → T5X decoder features (inputs shifted within segments, weights)."""
    targets = packed["targets"].astype(np.int32)
    segment_ids = packed["targets_segment_ids"].astype(np.int32)
    return {
        "decoder_input_tokens": objectives.autoregressive_inputs(targets, segment_ids),
        "decoder_target_tokens": targets,
        "decoder_segment_ids": segment_ids,
        "decoder_positions": packed["targets_positions"].astype(np.int32),
        "decoder_loss_weights": ((segment_ids > 0) & (targets > 0)).astype(np.float32),
    }


def make_dataset(
    config: DatasetConfig,
    vocabulary: vocab_lib.Vocabulary,
    *,
    sequence_length: int,
    batch_size: int,
    objective: Objective = objectives.causal_lm,
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    max_chunks_per_document: int = 64,
    stats: RecordStats | None = None,
) -> tuple[grain.IterDataset, RecordStats]:
    """This process's share of `batch_size` packed rows per step, as a grain IterDataset."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} must be divisible by {process_count} processes")
    local_batch = batch_size // process_count
    stats = stats or RecordStats()

    dataset = grain.MapDataset.source(config.source())[process_index::process_count]
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map_with_index(
        functools.partial(
            tokenize_record,
            vocabulary=vocabulary,
            text_feature=config.text_feature,
            objective=functools.partial(objective, eos_id=vocabulary.eos_id),
            seed=seed,
            stats=stats,
        )
    ).filter(lambda example: example is not None)

    iter_dataset = grain.experimental.FlatMapIterDataset(
        dataset.to_iter_dataset(),
        SplitLongExamples(sequence_length, max_chunks_per_document, stats),
    )
    iter_dataset = grain.experimental.FirstFitPackIterDataset(
        iter_dataset,
        length_struct={"targets": sequence_length},
        num_packing_bins=local_batch,
        seed=seed,
        shuffle_bins=shuffle,
    )
    iter_dataset = iter_dataset.map(to_decoder_features)
    return iter_dataset.batch(local_batch, drop_remainder=True), stats


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding):
    """Assembles every process's rows into global jax.Arrays laid out by `sharding`."""
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def batch_shapes(sequence_length: int, batch_size: int) -> dict[str, tuple[tuple[int, int], Any]]:
    """Global shapes and dtypes of a decoder batch (to build the train state abstractly)."""
    shape = (batch_size, sequence_length)
    return {
        "decoder_input_tokens": (shape, np.int32),
        "decoder_target_tokens": (shape, np.int32),
        "decoder_segment_ids": (shape, np.int32),
        "decoder_positions": (shape, np.int32),
        "decoder_loss_weights": (shape, np.float32),
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

"""The input pipeline: TFDS source → grain → tokens → objective → packed rows → global batch.

    source (tfds.data_source, array_record; no TensorFlow)
      → this data shard's records ([shard_index::shard_count], disjoint across shards)
      → shuffle(seed), repeat                      (training only)
      → decode + tokenize (bad records skipped and counted in `RecordStats`)
      → raw chunks of the objective's `raw_length`:
          concatenate_documents  documents joined with no separator, cut into full chunks
                                 (grain's ConcatThenSplitIterDataset; T5's
                                 reduce_concat_tokens + split_tokens)
          otherwise              each document cut on its own (`ChunkTokens`)
          next-sentence pairs    each document cut on its own, each chunk paired with
                                 another document half the time (next_sentence.py)
      → objective(tokens, seed)                     (pure; see objectives.py)
      → grain's FirstFitPackIterDataset              (segment ids + positions per row)
      → T5X feature names per architecture           (feature_converters.py)
      → batch of this shard's rows (batch_size // shard_count)
      → `global_batch`: one jax.Array over the mesh's batch axes

Data shards are the mesh's batch shards, not processes: processes whose devices hold the same
rows of the batch (a `model` or `fsdp` axis spanning hosts) pass the same `shard_index` and
read identical data. Every seed (shuffle, objective noise, packing) is folded with the shard
index, and the objective's seed with the example's position in its shard's stream, so no two
shards corrupt their k-th examples alike, while replicas of one shard agree.

The grain iterator's state is tiny (record index + chunker and packer state) and is saved
with every checkpoint, so a resumed run sees exactly the batches an uninterrupted run would.
For evaluation, `num_batches=N` yields exactly N batches on every shard: a shard that runs out
first pads with all-zero batches (segment ids and loss weights 0), which count for nothing in
summed metrics, so every host runs the same number of collective eval steps.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import threading
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from t5x_lite import paths
from t5x_lite.data import feature_converters as converters
from t5x_lite.data import next_sentence as nsp
from t5x_lite.data import objectives, python_docs
from t5x_lite.data import vocab as vocab_lib
from t5x_lite.models.model_format import ModelFormat, check_vocabulary

Objective = Callable[[np.ndarray, int], dict[str, np.ndarray]]


# A document longer than this many chunks loses its tail (a bound on one record's share).
MAX_CHUNKS_PER_DOCUMENT = 64


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
        return tfds.data_source(self.name, split=self.split, download=False,
                                data_dir=str(paths.as_path(data_dir)))

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
            "truncated", "skipped_by_preprocessor", "skipped_no_exemplar", "skipped_short_pair")

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


def bind_vocabulary(objective: Objective, vocabulary: vocab_lib.Vocabulary,
                    fmt: ModelFormat | None = None) -> Objective:
    """Fills an objective's `eos_id` / `vocab_size` / `extra_ids` fields from the vocabulary;
    one with a `bind(vocabulary, fmt)` method (`MaskedLM`: the format's mask id and the
    vocabulary's token tables) then binds the rest itself."""
    if dataclasses.is_dataclass(objective):
        fields = {f.name for f in dataclasses.fields(objective)}
        values = {"eos_id": vocabulary.eos_id, "vocab_size": vocabulary.vocab_size,
                  "extra_ids": vocabulary.extra_ids}
        objective = dataclasses.replace(
            objective, **{k: v for k, v in values.items() if k in fields})
    bind = getattr(objective, "bind", None)
    return bind(vocabulary, fmt) if bind is not None else objective


def shard_seed(seed: int, shard_index: int) -> int:
    """A 32-bit seed for one data shard: distinct shards get unrelated streams of randomness,
    the replicas of one shard the same one."""
    return int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0])


def concat_then_split(tokens: grain.IterDataset, length: int, max_tokens_per_document: int,
                      stats: RecordStats) -> grain.IterDataset:
    """Documents' tokens joined with no separator and cut into chunks of `length` (T5's
    `reduce_concat_tokens` + `split_tokens`; EOS is added later, by the objective). Only the
    last chunk of a finite stream is shorter. T5 concatenates 128 documents at a time, so
    its stream has a short chunk every 128 documents; here the stream is unbroken."""

    def as_feature(document):
        if len(document) > length:
            stats.add("split_long")
        return {"targets": document[:max_tokens_per_document]}

    chunks = grain.experimental.ConcatThenSplitIterDataset(
        tokens.map(as_feature), length_struct={"targets": length})
    # The packer's padding (zeros after the last chunk of a finite stream) is not data.
    return chunks.map(lambda row: row["targets"][row["targets_segment_ids"] > 0])


class PadToBatches(grain.IterDataset):
    """A finite dataset's batches; with `num_batches`, exactly that many: the parent's, then
    copies of `padding` (an empty batch) once it runs out, so every shard runs the same
    number of evaluation steps."""

    def __init__(self, parent: grain.IterDataset, num_batches: int | None, padding):
        super().__init__(parent)
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"num_batches must be positive, got {num_batches}")
        self.num_batches, self.padding = num_batches, padding

    def __iter__(self):
        return _PadToBatchesIterator(self._parent.__iter__(), self.num_batches, self.padding)


class _PadToBatchesIterator(grain.DatasetIterator):
    def __init__(self, parent, num_batches, padding):
        super().__init__(parent)
        self.num_batches, self.padding = num_batches, padding
        self.produced, self.exhausted = 0, False

    def __next__(self):
        if self.num_batches is not None and self.produced >= self.num_batches:
            raise StopIteration
        batch = None
        if not self.exhausted:
            try:
                batch = next(self._parent)
            except StopIteration:
                self.exhausted = True
        if batch is None and self.num_batches is None:
            raise StopIteration
        self.produced += 1
        return batch if batch is not None else {k: v.copy() for k, v in self.padding.items()}

    def get_state(self):
        return {"parent": self._parent.get_state(), "produced": self.produced,
                "exhausted": self.exhausted}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self.produced, self.exhausted = state["produced"], state["exhausted"]


def make_dataset(
    config: DatasetConfig,
    vocabulary: vocab_lib.Vocabulary,
    *,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    objective: Objective = objectives.CausalLM(),
    model_format: ModelFormat = ModelFormat(architecture="decoder"),
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_batches: int | None = None,
    max_chunks_per_document: int = MAX_CHUNKS_PER_DOCUMENT,
    stats: RecordStats | None = None,
) -> tuple[grain.IterDataset, RecordStats]:
    """This data shard's `batch_size // shard_count` packed rows per step, as an IterDataset.

    `shard_index` / `shard_count` are the mesh's batch shard of this process and the number
    of batch shards (default: one shard per process). `model_format` is the model's
    (`model_format.of(model)`): it decides the features, the start id and the EOS.

    Finite data (`repeat=False`) keeps its last partial batch, padded with empty rows, and
    comes as a `PadToBatches`; `num_batches=N` makes it exactly N batches, padded with empty
    batches when this shard's data runs out (module docstring).
    """
    fmt = model_format
    check_vocabulary(fmt, vocabulary)
    layout = fmt.architecture
    converters.check_layout(layout, feature_lengths)
    shard_index, shard_count, local_batch = shard_layout(batch_size, shard_index, shard_count)
    stats = stats or RecordStats()
    objective = bind_vocabulary(objective, vocabulary, fmt)
    raw_length = objective.raw_length(feature_lengths)
    local_seed = shard_seed(seed, shard_index)

    records = grain.MapDataset.source(config.source())[shard_index::shard_count]
    tokenize = functools.partial(tokenize_record, vocabulary=vocabulary,
                                 text_feature=config.text_feature)
    # Tokenizing before shuffling reads the same documents in the same order as after.
    dataset = records.map(functools.partial(tokenize, stats=stats))
    sentence_pairs = getattr(objective, "next_sentence", False)
    if sentence_pairs:
        dataset = dataset.map_with_index(nsp.tag_with_index)
    if shuffle:
        dataset = dataset.shuffle(seed=local_seed)
    if repeat:
        dataset = dataset.repeat()
    documents = dataset.filter(lambda document: document is not None).to_iter_dataset()
    chunker = ChunkTokens(raw_length, max_chunks_per_document, stats)
    if sentence_pairs:
        # Other documents are looked up by index; their records were counted once already.
        lookup = records.map(functools.partial(tokenize, stats=RecordStats()))
        iter_dataset = nsp.pair_stream(documents, lookup, chunker, stats, seed=local_seed)
    elif getattr(objective, "concatenate_documents", False):
        iter_dataset = concat_then_split(documents, raw_length,
                                         max_chunks_per_document * raw_length, stats)
    else:
        iter_dataset = grain.experimental.FlatMapIterDataset(documents, chunker)

    def apply_objective(element, rng: np.random.Generator):
        # grain sets `rng` from (local_seed, the example's index in this shard's stream).
        seed = int(rng.integers(2**31 - 1))
        example = (objective(element["tokens"], seed, element["other"]) if sentence_pairs
                   else objective(element, seed))
        packable, truncated = converters.to_packable(example, fmt, feature_lengths)
        if truncated:
            stats.add("truncated")
        return packable

    iter_dataset = iter_dataset.random_map(apply_objective, seed=local_seed)
    return pack_and_batch(iter_dataset, fmt, feature_lengths, local_batch, seed=local_seed,
                          shuffle=shuffle, repeat=repeat, num_batches=num_batches,
                          sentence_pairs=sentence_pairs), stats


def shard_layout(batch_size: int, shard_index: int | None,
                 shard_count: int | None) -> tuple[int, int, int]:
    """(shard index, shard count, rows per shard) with the defaults filled in (one shard per
    process) and checked."""
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is not in [0, {shard_count})")
    if batch_size % shard_count:
        raise ValueError(f"batch size {batch_size} must be divisible by {shard_count} shards")
    return shard_index, shard_count, batch_size // shard_count


def pack_and_batch(examples: grain.IterDataset, fmt: ModelFormat,
                   feature_lengths: Mapping[str, int], local_batch: int, *, seed: int,
                   shuffle: bool, repeat: bool, num_batches: int | None,
                   sentence_pairs: bool = False) -> grain.IterDataset:
    """Packable examples (`converters.to_packable`'s) → packed rows → the model's features →
    batches of `local_batch` rows; finite data as a `PadToBatches` (see `make_dataset`)."""
    layout = fmt.architecture
    packed = grain.experimental.FirstFitPackIterDataset(
        examples,
        length_struct=converters.packing_lengths(layout, feature_lengths,
                                                 sentence_pairs=sentence_pairs),
        num_packing_bins=local_batch,
        seed=seed,
        shuffle_bins=shuffle,
    )
    rows = packed.map(functools.partial(converters.convert, fmt=fmt))
    if repeat:
        batches = rows.batch(local_batch, drop_remainder=True)
        return (batches if num_batches is None
                else grain.experimental.LimitIterDataset(batches, num_batches))
    batches = rows.batch(local_batch, batch_fn=functools.partial(
        grain.experimental.batch_and_pad, batch_size=local_batch))
    padding = {name: np.zeros(shape, dtype) for name, (shape, dtype)
               in converters.batch_shapes(fmt, feature_lengths, local_batch,
                                          sentence_pairs=sentence_pairs).items()}
    return PadToBatches(batches, num_batches, padding)


def make_sharded_dataset(config: DatasetConfig, vocabulary: vocab_lib.Vocabulary, *,
                         pieces: Sequence[int], num_pieces: int, batch_size: int,
                         stats: RecordStats | None = None, prefetch_batches: int = 0,
                         **kwargs):
    """This process's rows of each global batch: one `make_dataset` stream per batch piece it
    holds (`partitioning.batch_pieces`), zipped into one iterator (one checkpointable state)
    and concatenated in piece order. `prefetch_batches` > 0 builds that many batches ahead in
    a thread (grain's ThreadPrefetchIterDataset, whose state is that of the last batch
    handed out, so checkpoints are unchanged) while the device runs the step.

    A piece's records, seeds and packing depend on its index and `num_pieces` only, so the
    global batch is the same however many processes share the pieces: a 2-host run trains on
    exactly what a 1-host run on the same mesh does."""
    stats = stats or RecordStats()
    # A data config may build its own streams (instruction mixtures: `InstructionData`).
    build = getattr(config, "make_dataset", None) or functools.partial(make_dataset, config)
    parts = [build(vocabulary, batch_size=batch_size, shard_index=piece,
                   shard_count=num_pieces, stats=stats, **kwargs)[0] for piece in pieces]
    dataset = (parts[0] if len(parts) == 1
               else grain.experimental.ZipIterDataset(parts).map(_concatenate_rows))
    if prefetch_batches:
        dataset = grain.experimental.ThreadPrefetchIterDataset(
            dataset, prefetch_buffer_size=prefetch_batches)
    return dataset, stats


def _concatenate_rows(batches) -> dict[str, np.ndarray]:
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding,
                 batch_size: int | None = None):
    """Assembles every process's rows into global jax.Arrays laid out by `sharding`.

    Give `batch_size` (the global one) when processes replicate rows (several processes per
    batch shard): JAX can't infer the global shape from the local one then.
    """
    def assemble(value):
        value = np.asarray(value)
        shape = None if batch_size is None else (batch_size, *value.shape[1:])
        return jax.make_array_from_process_local_data(sharding, value, shape)

    return {name: assemble(value) for name, value in local_batch.items()}


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

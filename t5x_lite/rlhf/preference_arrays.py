"""Comparisons and prompts as fixed-shape token arrays, and the batches jobs read them in.

No ragged data reaches jit: `encode` lays comparisons out as [N, K, length] int32 arrays
(0-padded, with lengths), `encode_prompts` PPO's and best-of-n's prompts, and `batches` serves
rows through a checkpointable grain iterator whose global batches are the same for any number
of processes.
"""
from __future__ import annotations

import collections
import logging
from typing import Mapping, Protocol, Sequence

import grain
import numpy as np

from t5x_lite.errors import InputError
from t5x_lite.rlhf.preferences import Comparison

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ arrays


class Vocabulary(Protocol):
    eos_id: int

    def encode(self, text: str) -> list[int]: ...


def _prompt_ids(text: str, vocabulary: Vocabulary, length: int,
                counts: collections.Counter, prompt_eos: bool) -> list[int]:
    """Token ids of a prompt (+ EOS when `prompt_eos`: see `encode`), keeping the LAST
    `length`: the turns next to the response."""
    ids = list(vocabulary.encode(text)) + ([vocabulary.eos_id] if prompt_eos else [])
    if len(ids) > length:
        counts["prompt truncated"] += 1
        ids = ids[len(ids) - length:]
    return ids


def _padded(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def _response_ids(comparison: Comparison, vocabulary: Vocabulary, length: int,
                  max_responses: int, counts: collections.Counter) -> list[list[int]]:
    """EOS-terminated ids of the responses that fit, best first, at most `max_responses`.
    A too-long response is dropped, not cut: a truncated reply would be ranked as if whole."""
    kept = []
    for text in comparison.responses:
        ids = list(vocabulary.encode(text)) + [vocabulary.eos_id]
        if len(ids) > length:
            counts["response too long"] += 1
        else:
            kept.append(ids)
    if len(kept) > max_responses:
        counts["more than max_responses"] += 1
        kept = kept[:max_responses]
    return kept


def encode(comparisons: Sequence[Comparison], vocabulary: Vocabulary, *, prompt_length: int,
           response_length: int, max_responses: int, prompt_eos: bool = False,
           ) -> tuple[dict[str, np.ndarray], collections.Counter]:
    """Fixed-shape int32 arrays of `comparisons` (0-padded) and counts of what was cut.
    `prompt_eos` ends each prompt with EOS, as instruction tuning ends its inputs
    (jobs.prompt_eos decides it for a model)."""
    if max_responses < 2:
        raise ValueError(f"max_responses must be at least 2, got {max_responses}")
    counts: collections.Counter = collections.Counter()
    prompts, responses = [], []
    for comparison in comparisons:
        kept = _response_ids(comparison, vocabulary, response_length, max_responses, counts)
        if len(kept) < 2:
            counts["fewer than two responses"] += 1
            continue
        prompts.append(_prompt_ids(comparison.prompt, vocabulary, prompt_length, counts,
                                   prompt_eos))
        responses.append(kept)
    if not prompts:
        raise InputError(f"no comparison of {len(comparisons)} fits response_length="
                         f"{response_length} ({dict(counts)})")
    table = np.zeros((len(responses), max_responses, response_length), np.int32)
    lengths = np.zeros((len(responses), max_responses), np.int32)
    for i, kept in enumerate(responses):
        table[i, :len(kept)] = _padded(kept, response_length)
        lengths[i, :len(kept)] = [len(ids) for ids in kept]
    return {"prompt": _padded(prompts, prompt_length),
            "prompt_lengths": np.array([len(p) for p in prompts], np.int32),
            "responses": table, "response_lengths": lengths,
            "num_responses": np.array([len(r) for r in responses], np.int32)}, counts


def encode_prompts(prompts: Sequence[str], vocabulary: Vocabulary, *, prompt_length: int,
                   prompt_eos: bool = False) -> dict[str, np.ndarray]:
    """{"prompt", "prompt_lengths"} of a PPO prompt set, truncated as in `encode`."""
    if not prompts:
        raise InputError("no prompts to encode")
    counts: collections.Counter = collections.Counter()
    ids = [_prompt_ids(p, vocabulary, prompt_length, counts, prompt_eos) for p in prompts]
    if counts:
        logger.info("%d of %d prompts truncated to their last %d tokens",
                    counts["prompt truncated"], len(prompts), prompt_length)
    return {"prompt": _padded(ids, prompt_length),
            "prompt_lengths": np.array([len(i) for i in ids], np.int32)}


# ------------------------------------------------------------------------------ batches


def batches(arrays: Mapping[str, np.ndarray], *, batch_size: int, seed: int,
            shuffle: bool = True, repeat: bool = True, shard_index: int = 0,
            num_shards: int = 1, drop_remainder: bool = False) -> grain.DatasetIterator:
    """A checkpointable iterator of this process's part of each global batch: the global
    batches are the same for any number of processes (one shuffled order of all rows, the
    same seed everywhere, reshuffled every epoch), and shard i takes the i-th block of
    `batch_size // num_shards` rows of each, the rows its devices hold. So 2 hosts train on
    exactly what 1 host does. Without `repeat`, the last batch may be short (a shard's block
    then too, possibly empty) unless `drop_remainder`."""
    if batch_size <= 0 or batch_size % num_shards:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of "
                         f"num_shards {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    arrays = dict(arrays)
    sizes = {len(array) for array in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"arrays must share their first dimension, got {sizes}")
    dataset = grain.MapDataset.range(sizes.pop())
    if not len(dataset):
        raise InputError("no rows to batch")
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if repeat:
        dataset = dataset.repeat()
    # Global batches of row indices, this shard's block of each, then one fancy-index per
    # array per batch (not per row).
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    block = batch_size // num_shards
    mine = slice(shard_index * block, (shard_index + 1) * block)
    dataset = dataset.map(lambda rows: {name: array[rows[mine]]
                                        for name, array in arrays.items()})
    # Gathering rows of arrays in memory is cheap: a short prefetch overlaps it with the step
    # without grain's default of 16 threads and 500 buffered batches.
    read_options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
    return iter(dataset.to_iter_dataset(read_options))

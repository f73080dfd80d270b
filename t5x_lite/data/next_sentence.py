"""BERT's next-sentence prediction (NSP) data: sentence pairs, half of them not consecutive.

Devlin et al. 2019 (section 3.1, "Task #2"; create_pretraining_data.py): each example is
[CLS] A [SEP] B [SEP] where B is the text that really follows A 50% of the time (IsNext) and
a span of another, random document otherwise (NotNext); the model classifies the pair from
the first position. Here A and B come from one chunk of a document, cut at a random word
start: A is the chunk up to the cut; B is the rest (IsNext) or an equally long span starting
at a word start of another document of this data shard (NotNext). The row is A EOS B EOS, with
token types 0 over A and its EOS and 1 over B and its EOS; the model format's EOS is the
separator. Rows start with A's first piece, which the NSP head pools (the position
`heads.ClassifierHead(pooling='first')` reads as well); masked-LM corruption runs over A and
B together, never over a separator.

Off by default: RoBERTa (Liu et al. 2019, section 4.2, Table 2) found that removing NSP
matches or slightly improves downstream results. Switch it on with
`masked_lm.MaskedLM.next_sentence = True` and `encoder.EncoderConfig.next_sentence_head =
True`.

The pipeline step (`pair_stream`) is stateless beyond grain's own iterator state: whether a
chunk's B is replaced, and by which document, is drawn from grain's per-example rng, and the
other document is read by random access, so a checkpointed iterator resumes exactly.
"""
from __future__ import annotations

from typing import Any, Callable

import grain
import numpy as np

IS_NEXT, NOT_NEXT = 0, 1  # BERT's (and transformers') next_sentence_label values
NOT_NEXT_RATE = 0.5
# Features a pair adds to a masked-LM example: the segment (0: A, 1: B) of every position,
# and at the first position 1 + the label (0 elsewhere: no label here).
PAIR_FEATURES = ("token_types", "next_sentence")
_OTHER_DOCUMENT_TRIES = 10  # as BERT's create_pretraining_data.py


def cut_at_word(tokens: np.ndarray, rng: np.random.Generator,
                word_starts: np.ndarray | None) -> int:
    """A cut in [1, len(tokens) - 1], uniform over the word starts there (any position when
    no word starts in that range, or without a word-start table)."""
    candidates = np.arange(1, len(tokens))
    if word_starts is not None:
        at_word = candidates[np.asarray(word_starts, bool)[tokens[1:]]]
        candidates = at_word if len(at_word) else candidates
    return int(rng.choice(candidates))


def sentence_pair(tokens: np.ndarray, seed: int, other: np.ndarray | None = None, *,
                  word_starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(A, B, label) from one chunk of at least two tokens: A is the chunk up to a random
    word start; B is the rest (IS_NEXT) or, when `other` (another document's tokens) is
    given, a span of it as long as the rest, from a random word start (NOT_NEXT)."""
    tokens = np.asarray(tokens, np.int32)
    if len(tokens) < 2:
        raise ValueError(f"a sentence pair needs a chunk of at least 2 tokens, got {len(tokens)}")
    rng = np.random.default_rng(seed)
    cut = cut_at_word(tokens, rng, word_starts)
    first, rest = tokens[:cut], tokens[cut:]
    if other is None:
        return first, rest, IS_NEXT
    other = np.asarray(other, np.int32)
    starts = np.arange(max(len(other) - len(rest), 0) + 1)
    if word_starts is not None and len(other):
        at_word = starts[np.asarray(word_starts, bool)[other[starts]]]
        starts = at_word if len(at_word) else starts
    start = int(rng.choice(starts))
    return first, other[start:start + len(rest)], NOT_NEXT


def pair_row(first: np.ndarray, second: np.ndarray, label: int, corrupt: Callable,
             eos_id: int) -> dict[str, np.ndarray]:
    """A EOS B EOS as a masked-LM example with the pair features. `corrupt(tokens)` is the
    masked-LM corruption of A+B (`masked_lm.masked_lm`, which appends the last EOS); the
    separating EOS is inserted after it, so it is never selected."""
    example = corrupt(np.concatenate([first, second]))
    cut = len(first)
    row = {name: np.insert(values, cut, eos_id if name != "selected" else 0).astype(np.int32)
           for name, values in example.items()}
    row["token_types"] = (np.arange(len(row["targets"])) > cut).astype(np.int32)
    row["next_sentence"] = np.zeros(len(row["targets"]), np.int32)
    row["next_sentence"][0] = 1 + label
    return row


def labels_and_weights(next_sentence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packed `next_sentence` rows → (labels, float32 weights): a label where a pair starts."""
    next_sentence = np.asarray(next_sentence)
    return (np.maximum(next_sentence - 1, 0).astype(np.int32),
            (next_sentence > 0).astype(np.float32))


class IndexedChunks(grain.experimental.FlatMapTransform):
    """(document index, tokens) → (document index, chunk) for every chunk of two or more
    tokens that `chunker` cuts (a shorter one cannot be split into a pair; counted as
    `skipped_short_pair`)."""

    def __init__(self, chunker: grain.experimental.FlatMapTransform, stats):
        self.chunker, self.stats = chunker, stats
        self.max_fan_out = chunker.max_fan_out

    def flat_map(self, element):
        index, tokens = element
        chunks = self.chunker.flat_map(tokens)
        kept = [(index, chunk) for chunk in chunks if len(chunk) >= 2]
        if len(kept) < len(chunks):
            self.stats.add("skipped_short_pair", len(chunks) - len(kept))
        return kept


class WithOtherDocument(grain.transforms.RandomMap):
    """(document index, chunk) → {'tokens': chunk, 'other': None or another document's
    tokens}: another document (never the chunk's own) half the time, read from `documents`
    (this shard's tokenized documents, by random access; None marks an unusable record)."""

    def __init__(self, documents: grain.MapDataset, rate: float = NOT_NEXT_RATE):
        self.documents, self.rate = documents, rate

    def random_map(self, element, rng: np.random.Generator) -> dict[str, Any]:
        index, chunk = element
        other = None
        if rng.random() < self.rate and len(self.documents) > 1:
            for _ in range(_OTHER_DOCUMENT_TRIES):
                candidate = int(rng.integers(len(self.documents)))
                other = None if candidate == index else self.documents[candidate]
                if other is not None:
                    break
        return {"tokens": chunk, "other": other}


def tag_with_index(index: int, tokens: np.ndarray | None):
    """(index, tokens) for `MapDataset.map_with_index`; None stays None (a skipped record)."""
    return None if tokens is None else (index, tokens)


def pair_stream(indexed: grain.IterDataset, documents: grain.MapDataset,
                chunker: grain.experimental.FlatMapTransform, stats, *,
                seed: int) -> grain.IterDataset:
    """Indexed documents (`tag_with_index`'s, in training order) → {'tokens', 'other'}
    elements for `masked_lm.MaskedLM(next_sentence=True)`."""
    chunks = grain.experimental.FlatMapIterDataset(indexed, IndexedChunks(chunker, stats))
    return chunks.random_map(WithOtherDocument(documents), seed=seed)

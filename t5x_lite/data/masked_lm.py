"""BERT's masked language modelling (Devlin et al. 2019, section 3.1 and appendix A.1).

As `create_masked_lm_predictions` of BERT's create_pretraining_data.py does it: a fixed share
of the positions is selected for prediction; each selected token is replaced by the mask id
(80%), by a random token (10%) or left as it is (10%), and the loss is taken on exactly the
selected positions, whatever they now hold. `MaskedLM` is the gin-facing objective, with the
same contract as those of objectives.py; next-sentence pairs come from next_sentence.py.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import numpy as np

from t5x_lite.data import next_sentence as nsp

WORD_START = "\u2581"  # "▁": SentencePiece's mark on a piece that begins a word


def num_to_predict(length: int, mask_rate: float = 0.15,
                   max_predictions: int | None = None) -> int:
    """BERT's count of selected positions: round(length · rate), at least 1 (when there is a
    token) and at most `max_predictions` (BERT's max_predictions_per_seq)."""
    count = min(max(1, round(length * mask_rate)), length)
    return count if max_predictions is None else min(count, max_predictions)


def word_ids(tokens: np.ndarray, word_starts: np.ndarray) -> np.ndarray:
    """The index of the word each position belongs to; a chunk's first token starts a word
    even when it continues one cut at the chunk's edge."""
    starts = np.asarray(word_starts, bool)[tokens]
    if len(starts):
        starts[0] = True
    return np.cumsum(starts) - 1


def select_positions(tokens: np.ndarray, rng: np.random.Generator, *, mask_rate: float,
                     max_predictions: int | None = None,
                     word_starts: np.ndarray | None = None) -> np.ndarray:
    """Boolean selection of exactly `num_to_predict` positions (token-level), or, with
    `word_starts`, of whole words in random order, skipping any word that would overshoot
    the count (BERT's whole-word masking, which can fall a few tokens short)."""
    length = len(tokens)
    target = num_to_predict(length, mask_rate, max_predictions) if length else 0
    selected = np.zeros(length, bool)
    if word_starts is None:
        selected[rng.permutation(length)[:target]] = True
        return selected
    words = word_ids(tokens, word_starts)
    sizes = np.bincount(words)
    chosen, count = np.zeros(len(sizes), bool), 0
    for word in rng.permutation(len(sizes)):
        if count >= target:
            break
        if count + sizes[word] <= target:
            chosen[word], count = True, count + sizes[word]
    return chosen[words]


def masked_lm(
    tokens: np.ndarray,
    seed: int,
    *,
    mask_id: int,
    random_ids: np.ndarray,
    eos_id: int = 1,
    mask_rate: float = 0.15,
    mask_token_rate: float = 0.8,
    random_token_rate: float = 0.1,
    max_predictions: int | None = None,
    word_starts: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """BERT's masked-LM corruption of one chunk; EOS ends it and is never selected.

    Returns aligned `inputs` (corrupted), `targets` (original) and `selected` (1 where the
    loss is taken). `random_ids` are the ids a random replacement is drawn from, uniformly;
    `word_starts[id]` says whether a piece starts a word (whole-word masking when given).
    The 80/10/10 choice is drawn independently per selected position, as in BERT.
    """
    tokens = np.asarray(tokens, np.int32)
    rng = np.random.default_rng(seed)
    selected = select_positions(tokens, rng, mask_rate=mask_rate,
                                max_predictions=max_predictions, word_starts=word_starts)
    draw = rng.random(len(tokens))
    random_tokens = np.asarray(random_ids, np.int32)[
        rng.integers(len(random_ids), size=len(tokens))]
    inputs = np.where(selected & (draw < mask_token_rate), np.int32(mask_id), tokens)
    replace = selected & (draw >= mask_token_rate) & (draw < mask_token_rate + random_token_rate)
    inputs = np.where(replace, random_tokens, inputs)
    eos = np.asarray([eos_id], np.int32)
    return {"inputs": np.concatenate([inputs, eos]).astype(np.int32),
            "targets": np.concatenate([tokens, eos]),
            "selected": np.concatenate([selected, [False]]).astype(np.int32)}


def random_token_ids(vocabulary, exclude=()) -> np.ndarray:
    """The ids a masked-LM random replacement draws from: every piece that is text (not a
    control, unknown or unused piece, not a sentinel; `Vocabulary.is_special`), less
    `exclude` (the mask id, when it is a piece)."""
    excluded = set(exclude)
    ids = [i for i in range(vocabulary.vocab_size)
           if i not in excluded and not vocabulary.is_special(i)]
    return np.asarray(ids, np.int32)


def word_start_table(vocabulary) -> np.ndarray:
    """Per id, whether the piece starts a word: SentencePiece marks a word start with '▁'
    (U+2581, the space before it); a piece opening with other whitespace (a newline, a tab:
    not marked, as our vocabularies keep whitespace) starts one too, and special ids and
    sentinels stand alone. Byte-fallback pieces continue the previous piece (they spell one
    character)."""
    def starts(token_id: int) -> bool:
        piece = vocabulary.id_to_piece(token_id)
        return vocabulary.is_special(token_id) or piece[:1] == WORD_START or piece[:1].isspace()

    return np.asarray([starts(i) for i in range(vocabulary.vocab_size)], bool)


@dataclasses.dataclass(frozen=True)
class MaskedLM:
    """BERT's masked LM for an encoder-only model (the "encoder" feature layout).

    Exactly `num_to_predict` = round(0.15 · n) positions of each n-token chunk are selected
    (BERT's create_pretraining_data.py, not an independent coin per token), capped by
    `max_predictions`; of those 80% become the mask id, 10% a random text piece, 10% stay
    (drawn per position). `whole_word` selects whole words (Devlin et al.'s later
    whole-word-masking release) by SentencePiece's '▁' word starts.

    The mask id has one source: the model's `ModelFormat.mask_id`, which the pipeline binds
    here (with the vocabulary's EOS, its random-replacement ids and word starts); set
    `mask_id` by hand only to call the objective directly. Documents are cut on their own by
    default and packed, so no example spans two documents (RoBERTa's slightly better
    DOC-SENTENCES, with packing keeping rows full).

    `next_sentence=True` adds BERT's next-sentence prediction (data/next_sentence.py): each
    example is a sentence pair A EOS B EOS, B another document's half the time, called as
    `objective(tokens, seed, other)`. Off by default, as RoBERTa (Liu et al. 2019, section
    4.2) found that dropping it matches or improves downstream results.
    """

    mask_rate: float = 0.15
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    max_predictions: int | None = None
    whole_word: bool = False
    concatenate_documents: bool = False
    next_sentence: bool = False
    eos_id: int = 1
    mask_id: int | None = None
    # Bound from the vocabulary by `bind` (derived, so not compared or shown).
    random_ids: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    word_starts: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not 0.0 < self.mask_rate <= 1.0:
            raise ValueError(f"mask_rate must be in (0, 1], got {self.mask_rate}")
        rates = (self.mask_token_rate, self.random_token_rate)
        if min(rates) < 0.0 or sum(rates) > 1.0:
            raise ValueError(f"mask_token_rate and random_token_rate must be >= 0 and sum to "
                             f"at most 1, got {rates}")
        if self.next_sentence and self.concatenate_documents:
            raise ValueError("MaskedLM(next_sentence=True) pairs a chunk with other documents: "
                             "it needs concatenate_documents=False")

    def raw_length(self, feature_lengths: Mapping[str, int]) -> int:
        """The encoder's length less one EOS ({'inputs': L}, see feature_converters), or
        less two for a sentence pair's."""
        return feature_lengths["inputs"] - (2 if self.next_sentence else 1)

    def bind(self, vocabulary, fmt=None) -> "MaskedLM":
        """This objective with the model format's mask id and the vocabulary's tables."""
        mask_id = getattr(fmt, "mask_id", None)
        if mask_id is None:
            mask_id = self.mask_id
        elif self.mask_id not in (None, mask_id):
            raise ValueError(f"MaskedLM.mask_id={self.mask_id} but the model's format says "
                             f"mask_id={mask_id}; leave MaskedLM's unset")
        if mask_id is None:
            raise ValueError("MaskedLM needs a mask id: set the model's ModelFormat.mask_id "
                             "(e.g. the vocabulary's <extra_id_0>, vocab_size - 1)")
        if not 0 <= mask_id < vocabulary.vocab_size or mask_id == vocabulary.eos_id:
            raise ValueError(f"mask_id={mask_id} must be a non-EOS id below the vocabulary's "
                             f"{vocabulary.vocab_size}")
        return dataclasses.replace(
            self, mask_id=mask_id, random_ids=random_token_ids(vocabulary, exclude=[mask_id]),
            word_starts=(word_start_table(vocabulary)
                         if self.whole_word or self.next_sentence else None))

    def __call__(self, tokens, seed, other=None):
        if self.mask_id is None or self.random_ids is None:
            raise ValueError("MaskedLM needs mask_id and random_ids (the pipeline binds them)")
        if self.whole_word and self.word_starts is None:
            raise ValueError("MaskedLM(whole_word=True) needs word_starts (bind it)")
        corrupt = functools.partial(
            masked_lm, seed=seed, mask_id=self.mask_id, random_ids=self.random_ids,
            eos_id=self.eos_id, mask_rate=self.mask_rate, mask_token_rate=self.mask_token_rate,
            random_token_rate=self.random_token_rate, max_predictions=self.max_predictions,
            word_starts=self.word_starts if self.whole_word else None)
        if not self.next_sentence:
            return corrupt(tokens)
        # The pair's cut and B's span draw from a seed of their own, so the corruption's
        # draws are those of any chunk.
        first, second, label = nsp.sentence_pair(
            tokens, seed + 1, other, word_starts=self.word_starts)
        return nsp.pair_row(first, second, label, corrupt, self.eos_id)

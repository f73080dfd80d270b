"""Pretraining objectives: pure functions of (tokens, seed) that return unpacked features.

Every objective takes one chunk of raw token ids (no EOS yet) and an integer seed, and returns
a dict of 1-D int32 arrays: `targets`, and `inputs` for objectives that have them (a masked
LM's are aligned, with a 0/1 `selected` marking where the loss is taken). The same
(tokens, seed) gives the same output on every host, so data loading is reproducible and
resumable. Packing and the shift into model inputs happen later, after packing, because they
depend on where an example lands in a row.

The gin-facing objectives are small frozen dataclasses (`CausalLM`, `PrefixLM`,
`SpanCorruption`, `MaskedLM`) wrapping the functions below: calling one is the pure function,
and its `raw_length(feature_lengths)` says how many raw tokens the pipeline should cut into
each chunk so the outputs fit the model's feature lengths. Their `concatenate_documents`
field says where the chunks come from (pipeline.py):

  True   documents are concatenated into one stream with no separator and the stream is cut
         into chunks of exactly `raw_length` tokens (T5's `reduce_concat_tokens` then
         `split_tokens`; the default of `SpanCorruption`, as in T5's `span_corruption`).
  False  each document is cut on its own; its last chunk is shorter (the per-document mode;
         the default of `CausalLM`, `PrefixLM` (as in T5's `prefix_lm`) and `MaskedLM`).

The pipeline fills in `eos_id` and `vocab_size` from the vocabulary, and `MaskedLM.bind` takes
the model format's mask id and the vocabulary's random-replacement ids and word starts.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import numpy as np

from t5x_lite.data import next_sentence as nsp


def causal_lm(tokens: np.ndarray, seed: int, *, eos_id: int = 1) -> dict[str, np.ndarray]:
    """Next-token prediction: the document followed by EOS is the target sequence."""
    del seed  # deterministic objective; the seed is part of the common signature
    tokens = np.asarray(tokens, np.int32)
    return {"targets": np.concatenate([tokens, np.asarray([eos_id], np.int32)])}


def autoregressive_inputs(targets: np.ndarray, segment_ids: np.ndarray | None,
                          start_id: int = 0) -> np.ndarray:
    """Shifts packed targets right by one within each segment, starting each with `start_id`
    (the model format's BOS, or T5's decoder start 0; see models/model_format.py).

    [a b c | d e] with segments [1 1 1 2 2] → [s a b | s d]; works on [..., length] arrays.
    """
    targets = np.asarray(targets)
    shifted = np.full_like(targets, start_id)
    shifted[..., 1:] = targets[..., :-1]
    if segment_ids is not None:
        starts = np.ones_like(segment_ids, dtype=bool)
        starts[..., 1:] = segment_ids[..., 1:] != segment_ids[..., :-1]
        shifted = np.where(starts, start_id, shifted)
    return shifted


# --------------------------------------------------------------------------- span corruption
# T5's span corruption (Raffel et al. 2020, section 3.1.4; the `random_spans_*` preprocessors
# of the T5 codebase): 15% of the tokens, in spans of mean length 3, are each replaced in the
# inputs by one sentinel; the targets list each sentinel followed by the span it replaced.


def noise_span_counts(length: int, noise_density: float = 0.15,
                      mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(noise tokens, noise spans) of T5's `random_spans_noise_mask` for `length` tokens.

    round(length·density) kept within [1, length-1], and max(round(noise / mean span), 1),
    computed in float32 and rounded half to even exactly as T5's TensorFlow code does: e.g.
    190 tokens at 0.15 give 29 noise tokens (190·0.15 is 28.500002 in float32), not 28.
    """
    num_noise_tokens = int(np.round(np.float32(length) * np.float32(noise_density)))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(np.round(np.float32(num_noise_tokens)
                                   / np.float32(mean_noise_span_length)))
    return num_noise_tokens, max(num_noise_spans, 1)


def _inputs_and_targets_length(tokens_length: int, noise_density: float,
                               mean_noise_span_length: float, extra_inputs: int,
                               extra_targets: int) -> tuple[int, int]:
    # The counts `random_spans_noise_mask` uses, so the lengths are exactly those
    # `span_corruption` produces. T5's helper computes them in float64 without the clamps,
    # so where its mask (float32, clamped) rounds differently (inputs_length <= 9, or e.g.
    # 172 at the defaults) its lengths miss what its own span corruption makes; ours don't.
    num_noise_tokens, num_noise_spans = noise_span_counts(
        tokens_length, noise_density, mean_noise_span_length)
    num_nonnoise_tokens = tokens_length - num_noise_tokens
    # Inputs: non-noise tokens, a sentinel per span, EOS. Targets: noise tokens, a sentinel
    # per span, EOS.
    return (num_nonnoise_tokens + num_noise_spans * extra_inputs + 1,
            num_noise_tokens + num_noise_spans * extra_targets + 1)


def random_spans_helper(
    inputs_length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """(raw tokens per example, targets length) such that span corruption of that many raw
    tokens fills `inputs_length` exactly (T5's helper: 512 → (568, 114))."""
    lengths = lambda n: _inputs_and_targets_length(
        n, noise_density, mean_noise_span_length, extra_tokens_per_span_inputs,
        extra_tokens_per_span_targets)
    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    # T5's adjustment: at density 0.5 make the targets no longer than the inputs.
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator):
    """Splits `num_items` into `num_segments` non-empty parts at random; returns their lengths."""
    first_in_segment = np.zeros(num_items, bool)
    first_in_segment[1:] = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
    segment_ids = np.cumsum(first_in_segment)
    return np.bincount(segment_ids, minlength=num_segments)


def random_spans_noise_mask(length: int, seed: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
    """Boolean noise mask with T5's span structure, starting with a non-noise span.

    `noise_span_counts` noise tokens in that many spans; noise and non-noise tokens are each
    split at random into that many non-empty spans, interleaved non-noise first. Only the
    random draw differs from T5's (NumPy, not TensorFlow's stateless shuffle).
    """
    original_length = length
    length = max(length, 2)
    num_noise_tokens, num_noise_spans = noise_span_counts(length, noise_density,
                                                          mean_noise_span_length)
    num_nonnoise_tokens = length - num_noise_tokens
    rng = np.random.default_rng(seed)
    noise_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, rng)
    nonnoise_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    span_start_indicator = np.zeros(length, np.int32)
    span_start_indicator[span_starts] = 1
    is_noise = np.cumsum(span_start_indicator) % 2 == 1
    return is_noise[:original_length]


def _replace_spans_with_sentinels(tokens: np.ndarray, mask: np.ndarray,
                                  vocab_size: int) -> np.ndarray:
    """Keeps tokens where `mask` is False; each run of True becomes one sentinel, numbered
    down from the last vocabulary id (<extra_id_0> = vocab_size - 1, then - 2, ...)."""
    previous = np.concatenate([[False], mask[:-1]])
    first_of_span = mask & ~previous
    sentinels = vocab_size - np.cumsum(first_of_span)
    replaced = np.where(first_of_span, sentinels, tokens)
    return replaced[~(mask & previous)]


def corrupt_spans(tokens: np.ndarray, noise_mask: np.ndarray, *, eos_id: int = 1,
                  vocab_size: int) -> dict[str, np.ndarray]:
    """The deterministic half of span corruption, for a given noise mask.

    Inputs: the non-noise tokens with each noise span replaced by one sentinel; targets: each
    sentinel followed by the noise span it replaced (T5's `noise_span_to_unique_sentinel` and
    `nonnoise_span_to_unique_sentinel`); EOS ends both (T5's output features add it).
    """
    tokens = np.asarray(tokens, np.int32)
    noise_mask = np.asarray(noise_mask, bool)
    if noise_mask.shape != tokens.shape:
        raise ValueError(f"noise mask shape {noise_mask.shape} != tokens shape {tokens.shape}")
    eos = np.asarray([eos_id], np.int32)
    inputs = _replace_spans_with_sentinels(tokens, noise_mask, vocab_size)
    targets = _replace_spans_with_sentinels(tokens, ~noise_mask, vocab_size)
    return {"inputs": np.concatenate([inputs, eos]).astype(np.int32),
            "targets": np.concatenate([targets, eos]).astype(np.int32)}


def span_corruption(
    tokens: np.ndarray,
    seed: int,
    *,
    eos_id: int = 1,
    vocab_size: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> dict[str, np.ndarray]:
    """T5's span corruption of one chunk of raw tokens (at most `random_spans_helper`'s length).

    `vocab_size` is the vocabulary's size including the extra ids, so sentinels count down
    from its last id. EOS ends both inputs and targets.
    """
    mask = random_spans_noise_mask(len(tokens), seed, noise_density, mean_noise_span_length)
    return corrupt_spans(tokens, mask, eos_id=eos_id, vocab_size=vocab_size)


def prefix_lm(tokens: np.ndarray, seed: int, *, eos_id: int = 1) -> dict[str, np.ndarray]:
    """Prefix LM (T5 section 3.3.2): a random split point; the prefix is the inputs and the
    rest, ended by EOS, the targets. Both parts are non-empty for documents of ≥ 2 tokens."""
    tokens = np.asarray(tokens, np.int32)
    if len(tokens) < 2:
        split = len(tokens)
    else:
        split = int(np.random.default_rng(seed).integers(1, len(tokens)))
    return {"inputs": tokens[:split],
            "targets": np.concatenate([tokens[split:], np.asarray([eos_id], np.int32)])}


# ------------------------------------------------------------------------- masked LM
# BERT's masked language modelling (Devlin et al. 2019, section 3.1 and appendix A.1; the
# `create_masked_lm_predictions` of BERT's create_pretraining_data.py): a fixed share of the
# positions is selected for prediction; each selected token is replaced by the mask id (80%),
# by a random token (10%) or left as it is (10%), and the loss is taken on exactly the
# selected positions, whatever they now hold.

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


# ----------------------------------------------------------------------- gin-facing objectives
@dataclasses.dataclass(frozen=True)
class CausalLM:
    """Next-token prediction over whole chunks (GPT); for an encoder-decoder the encoder input
    is empty (a lone EOS). `concatenate_documents=True` packs documents into full chunks
    with no separator between them (see the module docstring)."""

    eos_id: int = 1
    concatenate_documents: bool = False

    def raw_length(self, feature_lengths: Mapping[str, int]) -> int:
        return feature_lengths["targets"] - 1

    def __call__(self, tokens, seed):
        return causal_lm(tokens, seed, eos_id=self.eos_id)


@dataclasses.dataclass(frozen=True)
class PrefixLM:
    """Random split into inputs (prefix) and targets (the rest + EOS); one document per
    example unless `concatenate_documents` (T5's `prefix_lm` does not concatenate)."""

    eos_id: int = 1
    concatenate_documents: bool = False

    def raw_length(self, feature_lengths: Mapping[str, int]) -> int:
        """Decoder ({'targets': L}): L - 1, so prefix + rest + EOS fill L exactly.
        Encoder-decoder: min(Li + 1, Lt), so every split point fits both sides."""
        if "inputs" in feature_lengths:
            return min(feature_lengths["inputs"] + 1, feature_lengths["targets"])
        return feature_lengths["targets"] - 1

    def __call__(self, tokens, seed):
        return prefix_lm(tokens, seed, eos_id=self.eos_id)


@dataclasses.dataclass(frozen=True)
class SpanCorruption:
    """T5's span corruption; raw chunks are sized by `random_spans_helper` so the inputs fill
    `feature_lengths['inputs']` and the targets fit the helper's targets length.

    By default (`concatenate_documents=True`) the chunks come from the concatenated corpus,
    as in T5, so every chunk but the very last has exactly `raw_length` tokens and the noise
    density over the corpus is the requested one. With `concatenate_documents=False` each
    document is corrupted on its own: short documents then get relatively more noise (at
    least one noise token each) in shorter spans, T5's counts rounded per document.
    """

    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    eos_id: int = 1
    vocab_size: int | None = None
    extra_ids: int = 100  # sentinels available; more spans would reuse real token ids
    concatenate_documents: bool = True

    def raw_length(self, feature_lengths: Mapping[str, int]) -> int:
        """Encoder-decoder: the raw tokens whose corruption fills `inputs`. Decoder-only
        ({'targets': L}, T5's "decoder-only + denoising": inputs and targets share one
        row): the longest inputs whose corruption and targets fit L together."""
        if "inputs" not in feature_lengths:
            feature_lengths = {"inputs": self.decoder_inputs_length(feature_lengths["targets"])}
        tokens_length, targets_length = random_spans_helper(
            feature_lengths["inputs"], self.noise_density, self.mean_noise_span_length)
        _, spans = noise_span_counts(tokens_length, self.noise_density,
                                     self.mean_noise_span_length)
        if spans > self.extra_ids:
            raise ValueError(
                f"span corruption of {tokens_length} raw tokens makes {spans} noise spans but "
                f"the vocabulary has only {self.extra_ids} sentinels; shorten the inputs")
        if "targets" in feature_lengths and feature_lengths["targets"] < targets_length:
            raise ValueError(
                f"targets length {feature_lengths['targets']} is shorter than the "
                f"{targets_length} that span corruption of {feature_lengths['inputs']} input "
                "tokens needs (random_spans_helper)")
        return tokens_length

    def decoder_inputs_length(self, row_length: int) -> int:
        for inputs_length in range(row_length - 1, 1, -1):
            _, targets_length = random_spans_helper(
                inputs_length, self.noise_density, self.mean_noise_span_length)
            if inputs_length + targets_length <= row_length:
                return inputs_length
        raise ValueError(f"a {row_length}-token row cannot hold span-corrupted inputs and "
                         "their targets")

    def __call__(self, tokens, seed):
        if self.vocab_size is None:
            raise ValueError("SpanCorruption needs vocab_size (the pipeline sets it)")
        return span_corruption(tokens, seed, eos_id=self.eos_id, vocab_size=self.vocab_size,
                               noise_density=self.noise_density,
                               mean_noise_span_length=self.mean_noise_span_length)


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

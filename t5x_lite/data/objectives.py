"""Pretraining objectives: pure functions of (tokens, seed) that return unpacked features.

Every objective takes one chunk of raw token ids (no EOS yet) and an integer seed, and returns
a dict of 1-D int32 arrays: `targets`, and `inputs` for objectives that have them (a masked
LM's are aligned, with a 0/1 `selected` marking where the loss is taken). The same
(tokens, seed) gives the same output on every host, so data loading is reproducible and
resumable. Packing and the shift into model inputs happen later, after packing, because they
depend on where an example lands in a row.

The gin-facing objectives are small frozen dataclasses (`CausalLM`, `PrefixLM`,
`SpanCorruption`, and masked_lm.py's `MaskedLM`) wrapping the functions below: calling one is the pure function,
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
from typing import Mapping

import numpy as np



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

"""Pretraining objectives: pure functions of (tokens, seed) that return unpacked features.

Every objective takes the token ids of one chunk of a document (no EOS yet) and an integer
seed, and returns a dict of 1-D int32 arrays: `targets`, and `inputs` for objectives that have
them. The same (tokens, seed) gives the same output on every host, so data loading is
reproducible and resumable. Packing and the shift into model inputs happen later, after
packing, because they depend on where an example lands in a row.

The gin-facing objectives are small frozen dataclasses (`CausalLM`, `PrefixLM`,
`SpanCorruption`) wrapping the functions below: calling one is the pure function, and its
`raw_length(feature_lengths)` says how many raw tokens the pipeline should cut documents into
so the outputs fit the model's feature lengths. The pipeline fills in `eos_id` and
`vocab_size` from the vocabulary.
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


def autoregressive_inputs(targets: np.ndarray, segment_ids: np.ndarray | None) -> np.ndarray:
    """Shifts packed targets right by one within each segment, starting each with 0 (BOS).

    [a b c | d e] with segments [1 1 1 2 2] → [0 a b | 0 d]; works on [..., length] arrays.
    """
    targets = np.asarray(targets)
    shifted = np.zeros_like(targets)
    shifted[..., 1:] = targets[..., :-1]
    if segment_ids is not None:
        starts = np.ones_like(segment_ids, dtype=bool)
        starts[..., 1:] = segment_ids[..., 1:] != segment_ids[..., :-1]
        shifted = np.where(starts, 0, shifted)
    return shifted


# --------------------------------------------------------------------------- span corruption
# T5's span corruption (Raffel et al. 2020, section 3.1.4; the `random_spans_*` preprocessors
# of the T5 codebase): 15% of the tokens, in spans of mean length 3, are each replaced in the
# inputs by one sentinel; the targets list each sentinel followed by the span it replaced.


def _inputs_and_targets_length(tokens_length: int, noise_density: float,
                               mean_noise_span_length: float, extra_inputs: int,
                               extra_targets: int) -> tuple[int, int]:
    # The counts `random_spans_noise_mask` uses (at least one noise token, one non-noise token
    # and one span), so the lengths are exactly those `span_corruption` produces; T5's helper
    # skips the clamps and so overshoots short inputs (inputs_length <= 9 at the defaults).
    num_noise_tokens = int(round(tokens_length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), tokens_length - 1)
    num_nonnoise_tokens = tokens_length - num_noise_tokens
    num_noise_spans = max(int(round(num_noise_tokens / mean_noise_span_length)), 1)
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

    noise tokens = round(length·density), kept within [1, length-1]; spans =
    max(round(noise / mean span length), 1); noise and non-noise tokens are each split at
    random into that many non-empty spans, interleaved non-noise first.
    """
    original_length = length
    length = max(length, 2)
    num_noise_tokens = int(round(length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = max(int(round(num_noise_tokens / mean_noise_span_length)), 1)
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
    tokens = np.asarray(tokens, np.int32)
    mask = random_spans_noise_mask(len(tokens), seed, noise_density, mean_noise_span_length)
    eos = np.asarray([eos_id], np.int32)
    inputs = _replace_spans_with_sentinels(tokens, mask, vocab_size)
    targets = _replace_spans_with_sentinels(tokens, ~mask, vocab_size)
    return {"inputs": np.concatenate([inputs, eos]).astype(np.int32),
            "targets": np.concatenate([targets, eos]).astype(np.int32)}


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
    is empty (a lone EOS)."""

    eos_id: int = 1

    def raw_length(self, feature_lengths: Mapping[str, int]) -> int:
        return feature_lengths["targets"] - 1

    def __call__(self, tokens, seed):
        return causal_lm(tokens, seed, eos_id=self.eos_id)


@dataclasses.dataclass(frozen=True)
class PrefixLM:
    """Random split into inputs (prefix) and targets (the rest + EOS)."""

    eos_id: int = 1

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
    `feature_lengths['inputs']` and the targets fit the helper's targets length."""

    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    eos_id: int = 1
    vocab_size: int | None = None
    extra_ids: int = 100  # sentinels available; more spans would reuse real token ids

    def raw_length(self, feature_lengths: Mapping[str, int]) -> int:
        tokens_length, targets_length = random_spans_helper(
            feature_lengths["inputs"], self.noise_density, self.mean_noise_span_length)
        spans = max(int(round(round(tokens_length * self.noise_density)
                              / self.mean_noise_span_length)), 1)
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

    def __call__(self, tokens, seed):
        if self.vocab_size is None:
            raise ValueError("SpanCorruption needs vocab_size (the pipeline sets it)")
        return span_corruption(tokens, seed, eos_id=self.eos_id, vocab_size=self.vocab_size,
                               noise_density=self.noise_density,
                               mean_noise_span_length=self.mean_noise_span_length)

"""Pretraining objectives (T5 span corruption, prefix LM, causal LM) and feature converters.

Property tests on random token sequences, lengths and seeds, checked against T5's semantics
(Raffel et al. 2020; the `random_spans_*` / `span_corruption` preprocessors of the T5 codebase)
and T5X's decoder-only / encoder-decoder feature layouts.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from t5x_lite.data import feature_converters as fc
from t5x_lite.data import objectives
from t5x_lite.models.model_format import ModelFormat

EOS = 1
VOCAB_SIZE = 8292  # 8192 pieces + 100 sentinels
NUM_SENTINELS = 100
# T5's ids; a decoder-only prefix LM attending both ways over its inputs, or causally.
DECODER = ModelFormat(eos_id=EOS, architecture="decoder", inputs_attention="bidirectional")
DECODER_CAUSAL = ModelFormat(eos_id=EOS, architecture="decoder")
ENC_DEC = ModelFormat(eos_id=EOS, architecture="encoder_decoder")

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**31 - 1)
# (noise_density, mean_noise_span_length) pairs where T5's span structure is feasible: the
# number of spans never exceeds the number of non-noise tokens (density 0.5 with mean span 1
# is not: it asks for as many noise spans as non-noise tokens plus one).
span_params = st.sampled_from([(0.15, 3.0), (0.15, 3.0), (0.1, 2.0), (0.2, 5.0), (0.3, 3.0),
                               (0.5, 3.0), (0.5, 2.0), (0.05, 10.0)])


def random_tokens(length, seed, vocab_size=VOCAB_SIZE):
    """Real-token ids only: above pad/EOS and below the sentinel range."""
    return np.random.default_rng(seed).integers(2, vocab_size - NUM_SENTINELS, length,
                                                dtype=np.int32)


def runs(mask):
    """Lengths of the runs of True in a boolean vector."""
    mask = np.asarray(mask, bool)
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def is_sentinel(token, vocab_size=VOCAB_SIZE):
    return token >= vocab_size - NUM_SENTINELS


def merge_at_sentinels(inputs, targets, vocab_size=VOCAB_SIZE):
    """Rebuilds the raw tokens: each sentinel in the inputs becomes the tokens that follow the
    same sentinel in the targets, up to the next sentinel or EOS."""
    assert inputs[-1] == EOS and targets[-1] == EOS
    spans, current = {}, None
    for token in targets[:-1].tolist():
        if is_sentinel(token, vocab_size):
            assert token not in spans, "sentinel repeated in targets"
            current = token
            spans[current] = []
        else:
            assert current is not None, "targets must start with a sentinel"
            spans[current].append(token)
    merged = []
    for token in inputs[:-1].tolist():
        if is_sentinel(token, vocab_size):
            merged.extend(spans.pop(token))
        else:
            merged.append(token)
    assert not spans, f"sentinels {sorted(spans)} of the targets are not in the inputs"
    return np.asarray(merged, np.int32)


def expected_counts(length, density, mean_span):
    """T5's counts: round(length·density) noise tokens kept in [1, length-1], and
    max(round(noise / mean), 1) noise spans, in float32 as T5's TensorFlow code computes
    them (tf.cast to float32, tf.round: half to even)."""
    f32 = np.float32
    noise = min(max(int(np.round(f32(length) * f32(density))), 1), length - 1)
    return noise, max(int(np.round(f32(noise) / f32(mean_span))), 1)


# ------------------------------------------------------------------------ random_spans_helper
def test_random_spans_helper_t5_numbers():
    assert objectives.random_spans_helper(512) == (568, 114)
    # At density 0.5 the untouched answer would be 767 tokens → targets 384 + 128 + 1 = 513 >
    # 512 inputs, so T5's adjustment takes one token off: 766 tokens, targets 512.
    assert objectives.random_spans_helper(512, noise_density=0.5) == (766, 512)
    out = objectives.span_corruption(random_tokens(568, 0), 0, vocab_size=VOCAB_SIZE)
    assert (len(out["inputs"]), len(out["targets"])) == (512, 114)
    out = objectives.span_corruption(random_tokens(766, 0), 0, vocab_size=VOCAB_SIZE,
                                     noise_density=0.5)
    assert (len(out["inputs"]), len(out["targets"])) == (512, 512)


@SETTINGS
@given(inputs_length=st.integers(2, 2048), params=span_params, seed=seeds)
def test_random_spans_helper_lengths_fit(inputs_length, params, seed):
    density, mean_span = params
    tokens_length, targets_length = objectives.random_spans_helper(
        inputs_length, density, mean_span)
    corrupt = lambda n: objectives.span_corruption(
        random_tokens(n, seed), seed, vocab_size=VOCAB_SIZE, noise_density=density,
        mean_noise_span_length=mean_span)
    out = corrupt(tokens_length)
    assert len(out["inputs"]) <= inputs_length
    assert len(out["targets"]) <= targets_length
    if density < 0.5:
        # No adjustment: the inputs are filled exactly and one more raw token overflows them.
        assert len(out["inputs"]) == inputs_length
        assert len(out["targets"]) == targets_length
        assert len(corrupt(tokens_length + 1)["inputs"]) > inputs_length
    else:
        # The density-0.5 adjustment drops at most one token and keeps targets ≤ inputs.
        assert len(out["inputs"]) >= inputs_length - 1
        assert targets_length <= inputs_length


# ------------------------------------------------------------------------ noise mask
@SETTINGS
@given(length=st.integers(2, 4096), params=span_params, seed=seeds)
def test_noise_mask_span_structure(length, params, seed):
    density, mean_span = params
    mask = objectives.random_spans_noise_mask(length, seed, density, mean_span)
    num_noise, num_spans = expected_counts(length, density, mean_span)
    assert mask.dtype == bool and mask.shape == (length,)
    assert mask.sum() == num_noise
    assert not mask[0], "the mask must start with a non-noise token"
    noise_runs, nonnoise_runs = runs(mask), runs(~mask)
    assert len(noise_runs) == num_spans
    assert len(nonnoise_runs) == num_spans
    assert (noise_runs >= 1).all() and (nonnoise_runs >= 1).all()
    assert noise_runs.sum() == num_noise and nonnoise_runs.sum() == length - num_noise


@pytest.mark.parametrize("length, noise, spans", [
    (2, 1, 1), (3, 1, 1), (9, 1, 1),  # round(9 · 0.15) = 1 noise token; round(1 / 3) = 0 → 1 span
    (10, 2, 1), (30, 4, 1),           # round(1.5) = 2, round(4.5) = 4 (round half to even)
    (40, 6, 2), (100, 15, 5), (568, 85, 28),
    (190, 29, 10),                    # float32 like T5's TF code: 190 · 0.15 = 28.500002 → 29
])
def test_noise_mask_counts_by_hand(length, noise, spans):
    for seed in range(5):
        mask = objectives.random_spans_noise_mask(length, seed)
        assert mask.sum() == noise and not mask[0]
        assert len(runs(mask)) == spans and len(runs(~mask)) == spans


@SETTINGS
@given(length=st.integers(50, 2048), seed=st.integers(0, 2**31 - 9))
def test_noise_mask_deterministic_per_seed_and_varies_across_seeds(length, seed):
    masks = [objectives.random_spans_noise_mask(length, seed + i) for i in range(8)]
    again = [objectives.random_spans_noise_mask(length, seed + i) for i in range(8)]
    for a, b in zip(masks, again):
        np.testing.assert_array_equal(a, b)
    assert len({m.tobytes() for m in masks}) > 1


# ------------------------------------------------------------------------ span corruption
@SETTINGS
@given(length=st.integers(2, 600), seed=seeds, params=span_params,
       vocab_size=st.sampled_from([VOCAB_SIZE, 32100]))
def test_span_corruption_round_trips_through_sentinels(length, seed, params, vocab_size):
    density, mean_span = params
    _, num_spans = expected_counts(length, density, mean_span)
    # Only NUM_SENTINELS extra ids exist; beyond that T5 (and this code) would number sentinels
    # into the ordinary vocabulary, where they cannot be told apart from tokens.
    assume(num_spans <= NUM_SENTINELS)
    tokens = random_tokens(length, seed, vocab_size)
    out = objectives.span_corruption(tokens, seed, eos_id=EOS, vocab_size=vocab_size,
                                     noise_density=density, mean_noise_span_length=mean_span)
    inputs, targets = out["inputs"], out["targets"]
    assert inputs.dtype == np.int32 and targets.dtype == np.int32
    assert inputs[-1] == EOS and targets[-1] == EOS
    assert EOS not in inputs[:-1].tolist() and EOS not in targets[:-1].tolist()

    np.testing.assert_array_equal(merge_at_sentinels(inputs, targets, vocab_size), tokens)

    in_sentinels = [t for t in inputs.tolist() if is_sentinel(t, vocab_size)]
    out_sentinels = [t for t in targets.tolist() if is_sentinel(t, vocab_size)]
    # <extra_id_0> = vocab_size - 1, then counting down, in order of appearance, in both.
    expected = list(range(vocab_size - 1, vocab_size - 1 - num_spans, -1))
    assert in_sentinels == expected
    assert out_sentinels == expected
    assert targets[0] == vocab_size - 1
    assert not is_sentinel(inputs[0], vocab_size)  # the first span is non-noise

    # The inputs keep exactly the non-noise tokens of the mask, the targets the noise ones.
    mask = objectives.random_spans_noise_mask(length, seed, density, mean_span)
    keep = np.asarray([t for t in inputs[:-1].tolist() if not is_sentinel(t, vocab_size)])
    drop = np.asarray([t for t in targets[:-1].tolist() if not is_sentinel(t, vocab_size)])
    np.testing.assert_array_equal(keep, tokens[~mask])
    np.testing.assert_array_equal(drop, tokens[mask])


@SETTINGS
@given(length=st.integers(2, 300), seed=seeds)
def test_span_corruption_deterministic_and_dataclass_matches(length, seed):
    tokens = random_tokens(length, seed)
    a = objectives.span_corruption(tokens, seed, vocab_size=VOCAB_SIZE)
    b = objectives.SpanCorruption(vocab_size=VOCAB_SIZE, eos_id=EOS)(tokens, seed)
    for key in ("inputs", "targets"):
        np.testing.assert_array_equal(a[key], b[key])
    assert set(b) == {"inputs", "targets"}


def test_span_corruption_needs_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        objectives.SpanCorruption()(np.arange(2, 40), 0)


def test_span_corruption_hand_example():
    # Mask for seed 0 recomputed here; the layout follows T5's paper figure 2:
    # inputs  = kept tokens with one sentinel per dropped span,
    # targets = each sentinel followed by the span it replaced.
    tokens = np.arange(10, 30, dtype=np.int32)
    mask = objectives.random_spans_noise_mask(20, 0)
    out = objectives.span_corruption(tokens, 0, vocab_size=100)
    expected_inputs, expected_targets, sentinel = [], [], 99
    for i, token in enumerate(tokens.tolist()):
        if mask[i] and (i == 0 or not mask[i - 1]):
            expected_inputs.append(sentinel)
            expected_targets.append(sentinel)
            sentinel -= 1
        (expected_targets if mask[i] else expected_inputs).append(token)
    np.testing.assert_array_equal(out["inputs"], expected_inputs + [EOS])
    np.testing.assert_array_equal(out["targets"], expected_targets + [EOS])
    assert mask.sum() == 3  # round(20 · 0.15), in one span (round(3 / 3))


# ------------------------------------------------------------------------ golden: T5's code
# A NumPy transcription of t5.data.preprocessors, op by op: `random_spans_helper` (Python
# floats, no clamps), `random_spans_noise_mask` (tf.float32 counts, tf.round = half to even;
# its two stateless shuffles become given permutations), `noise_span_to_unique_sentinel` /
# `nonnoise_span_to_unique_sentinel` for inputs / targets, and the EOS the output features add.
# Only the shuffles' randomness differs from TF, so everything else is compared exactly.


def t5_helper(inputs_length, density=0.15, mean_span=3.0):
    def lengths(tokens_length):
        noise = int(round(tokens_length * density))
        spans = int(round(noise / mean_span))
        return tokens_length - noise + spans + 1, noise + spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs, targets = lengths(tokens_length)
    if density == 0.5 and targets > inputs:
        tokens_length, targets = tokens_length - 1, targets - 1
    return tokens_length, targets


def t5_mask_counts(length, density=0.15, mean_span=3.0):
    length = max(length, 2)
    noise = int(np.round(np.float32(length) * np.float32(density)))
    noise = min(max(noise, 1), length - 1)
    spans = max(int(np.round(np.float32(noise) / np.float32(mean_span))), 1)
    return noise, spans


def t5_segmentation(num_items, num_segments, order):
    """`_random_segmentation` with `seqio.stateless_shuffle` replaced by `x[order]`."""
    first_in_segment = np.pad((np.arange(num_items - 1) < num_segments - 1)[order].astype(int),
                              [1, 0])
    segment_id = np.cumsum(first_in_segment)
    return np.bincount(segment_id)  # tf.math.segment_sum(ones, segment_id)


def t5_mask_from_span_lengths(length, nonnoise_lengths, noise_lengths):
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    indicator = np.zeros(max(length, 2), int)
    np.add.at(indicator, span_starts, 1)  # tf.math.unsorted_segment_sum
    return (np.cumsum(indicator) % 2 == 1)[:length]


def t5_noise_mask(length, density, mean_span, rng):
    noise, spans = t5_mask_counts(length, density, mean_span)
    nonnoise = max(length, 2) - noise
    noise_lengths = t5_segmentation(noise, spans, rng.permutation(max(noise - 1, 0)))
    nonnoise_lengths = t5_segmentation(nonnoise, spans, rng.permutation(nonnoise - 1))
    return t5_mask_from_span_lengths(length, nonnoise_lengths, noise_lengths)


def t5_unique_sentinels(tokens, mask, vocab_size):
    previous = np.pad(mask[:-1], [1, 0])
    first_noise = mask & ~previous
    subsequent_noise = mask & previous
    sentinel = (vocab_size - 1) + 1 - np.cumsum(first_noise)  # sentinel_id(vocab) + 1 - cumsum
    return np.where(first_noise, sentinel, tokens)[~subsequent_noise]


def t5_span_corruption(tokens, mask, vocab_size, eos=EOS):
    return {"inputs": np.append(t5_unique_sentinels(tokens, mask, vocab_size), eos),
            "targets": np.append(t5_unique_sentinels(tokens, ~mask, vocab_size), eos)}


def test_golden_t5_unit_test_vectors():
    # t5/data/preprocessors_test.py: noise_span_to_unique_sentinel, random_spans_helper.
    tokens, mask = np.arange(10, 16), np.array([1, 1, 0, 0, 1, 0], bool)
    out = objectives.corrupt_spans(tokens, mask, eos_id=EOS, vocab_size=1000)
    np.testing.assert_array_equal(out["inputs"], [999, 12, 13, 998, 15, EOS])
    np.testing.assert_array_equal(out["targets"], [10, 11, 999, 14, 998, EOS])
    for key, value in t5_span_corruption(tokens, mask, 1000).items():
        np.testing.assert_array_equal(out[key], value)
    assert objectives.random_spans_helper(64, 0.2, 2.0) == t5_helper(64, 0.2, 2.0) == (70, 22)
    assert objectives.random_spans_helper(64, 0.2, 1.0) == t5_helper(64, 0.2, 1.0) == (63, 27)
    assert objectives.random_spans_helper(512) == t5_helper(512) == (568, 114)
    # T5's mask for length 32, density 0.25, mean span 2 and seeds (1, 2), (3, 4).
    t5_mask = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                        0, 0, 0, 0, 1, 0, 0, 1], bool)
    assert objectives.noise_span_counts(32, 0.25, 2.0) == t5_mask_counts(32, 0.25, 2.0) == (8, 4)
    assert (t5_mask.sum(), len(runs(t5_mask))) == (8, 4) and not t5_mask[0]
    assert (len(runs(~t5_mask)), runs(t5_mask).tolist()) == (4, [3, 3, 1, 1])
    mask = objectives.random_spans_noise_mask(32, 0, 0.25, 2.0)
    assert (mask.sum(), len(runs(mask)), len(runs(~mask)), mask[0]) == (8, 4, 4, False)
    tokens = random_tokens(32, 0)
    for key, value in t5_span_corruption(tokens, t5_mask, VOCAB_SIZE).items():
        np.testing.assert_array_equal(
            objectives.corrupt_spans(tokens, t5_mask, eos_id=EOS, vocab_size=VOCAB_SIZE)[key],
            value)


@SETTINGS
@given(length=st.integers(1, 600), seed=seeds, params=span_params,
       vocab_size=st.sampled_from([VOCAB_SIZE, 32100]))
def test_golden_span_corruption_on_fixed_masks(length, seed, params, vocab_size):
    """Sentinels, inputs, targets and EOS match T5's on masks T5 could draw, on any mask at
    all, and on this code's own masks."""
    rng = np.random.default_rng(seed)
    tokens = random_tokens(length, seed, vocab_size)
    t5_mask = t5_noise_mask(length, *params, rng)
    any_mask = rng.random(length) < rng.random()
    ours = objectives.random_spans_noise_mask(length, seed, *params)
    for mask in (t5_mask, any_mask, ours):
        out = objectives.corrupt_spans(tokens, mask, eos_id=EOS, vocab_size=vocab_size)
        for key, value in t5_span_corruption(tokens, mask, vocab_size).items():
            np.testing.assert_array_equal(out[key], value, err_msg=key)
            assert out[key].dtype == np.int32
    out = objectives.span_corruption(tokens, seed, eos_id=EOS, vocab_size=vocab_size,
                                     noise_density=params[0], mean_noise_span_length=params[1])
    for key, value in t5_span_corruption(tokens, ours, vocab_size).items():
        np.testing.assert_array_equal(out[key], value, err_msg=key)


@SETTINGS
@given(length=st.integers(1, 4096), seed=seeds, params=span_params)
@example(length=190, seed=0, params=(0.15, 3.0))  # float32 rounds up where float64 rounds down
def test_golden_noise_mask_structure(length, seed, params):
    """The counts are T5's (float32), the mask starts with non-noise, and T5's construction
    rebuilds it from its span lengths: it is a mask T5's code can produce."""
    mask = objectives.random_spans_noise_mask(length, seed, *params)
    t5_mask = t5_noise_mask(length, *params, np.random.default_rng(seed))
    noise, spans = t5_mask_counts(length, *params)
    assert objectives.noise_span_counts(max(length, 2), *params) == (noise, spans)
    if length >= 2:
        assert mask.sum() == t5_mask.sum() == noise
        assert len(runs(mask)) == len(runs(t5_mask)) == spans
        assert not mask[0] and not t5_mask[0]
        rebuilt = t5_mask_from_span_lengths(length, runs(~mask), runs(mask))
        np.testing.assert_array_equal(rebuilt, mask)
    else:
        assert mask.shape == t5_mask.shape == (1,) and not mask[0] and not t5_mask[0]


@pytest.mark.parametrize("params", [(0.15, 3.0), (0.1, 2.0), (0.2, 5.0), (0.3, 3.0),
                                    (0.25, 2.0), (0.5, 3.0), (0.5, 2.0)])
def test_golden_random_spans_helper(params):
    """T5's helper numbers, except where T5's helper (Python floats, no clamps) mispredicts
    the lengths its own mask (float32, clamped) produces; there ours gives the real ones."""
    density, mean_span = params

    def t5_real_lengths(tokens_length):  # what T5's span corruption makes of that many tokens
        mask = t5_noise_mask(tokens_length, density, mean_span, np.random.default_rng(0))
        out = t5_span_corruption(random_tokens(tokens_length, 0), mask, VOCAB_SIZE)
        return len(out["inputs"]), len(out["targets"])

    def consistent(inputs_length, lengths):  # the helper's lengths are what T5's code makes
        tokens_length, targets_length = lengths
        real = t5_real_lengths(tokens_length)
        if density == 0.5:  # T5's adjustment may leave the inputs one short
            return real[0] <= inputs_length and real[1] <= targets_length
        return (real == (inputs_length, targets_length)
                and t5_real_lengths(tokens_length + 1)[0] > inputs_length)

    disagree = []
    for inputs_length in [*range(2, 160), *range(160, 1025, 4)]:
        ours, t5 = (objectives.random_spans_helper(inputs_length, density, mean_span),
                    t5_helper(inputs_length, density, mean_span))
        if ours != t5:
            disagree.append(inputs_length)
            assert not consistent(inputs_length, t5) and consistent(inputs_length, ours)
    assert len(disagree) < 30
    if params == (0.15, 3.0):
        assert 172 in disagree and 512 not in disagree and 128 not in disagree


# ------------------------------------------------------------------------ prefix LM / causal LM
@SETTINGS
@given(length=st.integers(2, 2048), seed=seeds)
def test_prefix_lm_splits_and_rebuilds(length, seed):
    tokens = random_tokens(length, seed)
    out = objectives.prefix_lm(tokens, seed, eos_id=EOS)
    inputs, targets = out["inputs"], out["targets"]
    np.testing.assert_array_equal(np.concatenate([inputs, targets[:-1]]), tokens)
    assert len(inputs) >= 1 and len(targets) >= 2  # a non-empty rest, then EOS
    assert targets[-1] == EOS
    assert inputs.dtype == np.int32 and targets.dtype == np.int32
    again = objectives.PrefixLM(eos_id=EOS)(tokens, seed)
    np.testing.assert_array_equal(again["inputs"], inputs)
    np.testing.assert_array_equal(again["targets"], targets)


@SETTINGS
@given(length=st.integers(10, 2048), seed=st.integers(0, 2**31 - 17))
def test_prefix_lm_split_point_varies_with_seed(length, seed):
    tokens = random_tokens(length, 0)
    splits = {len(objectives.prefix_lm(tokens, seed + i)["inputs"]) for i in range(16)}
    assert len(splits) > 1
    assert all(1 <= s <= length - 1 for s in splits)


def test_prefix_lm_all_split_points_reachable():
    tokens = random_tokens(5, 0)
    splits = {len(objectives.prefix_lm(tokens, seed)["inputs"]) for seed in range(200)}
    assert splits == {1, 2, 3, 4}


def test_prefix_lm_single_token():
    out = objectives.prefix_lm(np.array([7]), 3)
    np.testing.assert_array_equal(out["inputs"], [7])
    np.testing.assert_array_equal(out["targets"], [EOS])


@SETTINGS
@given(length=st.integers(0, 500), seed=seeds, eos=st.sampled_from([1, 2]))
def test_causal_lm_is_tokens_then_eos(length, seed, eos):
    tokens = random_tokens(length, seed)
    out = objectives.CausalLM(eos_id=eos)(tokens, seed)
    assert set(out) == {"targets"}
    np.testing.assert_array_equal(out["targets"], np.append(tokens, eos))
    assert out["targets"].dtype == np.int32


# ------------------------------------------------------------------------ autoregressive inputs
@SETTINGS
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.integers(0, 4), seeds)
def test_autoregressive_inputs_shift_within_segments(segment_lengths, pad, seed):
    segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(segment_lengths)]
                                 + [np.zeros(pad, int)]).astype(np.int32)
    targets = np.where(segment_ids > 0, random_tokens(len(segment_ids), seed), 0)
    shifted = objectives.autoregressive_inputs(targets, segment_ids)
    for i in range(len(targets)):
        starts = i == 0 or segment_ids[i] != segment_ids[i - 1]
        assert shifted[i] == (0 if starts else targets[i - 1])
    # Batched rows give the same answer row by row; no segments is a plain shift.
    batched = objectives.autoregressive_inputs(np.stack([targets, targets]),
                                               np.stack([segment_ids, segment_ids]))
    np.testing.assert_array_equal(batched, np.stack([shifted, shifted]))
    np.testing.assert_array_equal(objectives.autoregressive_inputs(targets, None),
                                  np.concatenate([[0], targets[:-1]]))


# ------------------------------------------------------------------------ feature converters
def pack(examples, layout, row_lengths):
    """Concatenates `to_packable` outputs into one row per feature, with segment ids and
    positions, then pads to `row_lengths` (what the packer hands to the converters)."""
    packed = {}
    for key, length in row_lengths.items():
        values = [ex[key] for ex in examples]
        row = np.concatenate(values).astype(np.int32)
        segments = np.concatenate([np.full(len(v), i + 1) for i, v in enumerate(values)])
        positions = np.concatenate([np.arange(len(v)) for v in values])
        assert len(row) <= length
        padding = length - len(row)
        packed[key] = np.pad(row, (0, padding))
        if key != "prefix":
            packed[f"{key}_segment_ids"] = np.pad(segments, (0, padding)).astype(np.int32)
            packed[f"{key}_positions"] = np.pad(positions, (0, padding)).astype(np.int32)
    return packed


def test_decoder_prefix_lm_row_matches_t5x_example():
    # T5X PrefixLMFeatureConverter's packed example: inputs [9 4 6 1] / targets [3 9 1] and
    # inputs [3 2 1] / targets [4 1], row length 14.
    examples = [{"inputs": np.array([9, 4, 6, 1]), "targets": np.array([3, 9, 1])},
                {"inputs": np.array([3, 2, 1]), "targets": np.array([4, 1])}]
    lengths = {"targets": 14}
    packable = [fc.to_packable(ex, DECODER, lengths) for ex in examples]
    assert not any(truncated for _, truncated in packable)
    packed = pack([p for p, _ in packable], "decoder", fc.packing_lengths("decoder", lengths))
    features = fc.convert(packed, DECODER)
    expected = {
        "decoder_target_tokens": [9, 4, 6, 1, 3, 9, 1, 3, 2, 1, 4, 1, 0, 0],
        "decoder_input_tokens": [0, 9, 4, 6, 1, 3, 9, 0, 3, 2, 1, 4, 0, 0],
        "decoder_loss_weights": [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0],
        "decoder_positions": [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 0, 0],
        "decoder_segment_ids": [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0],
        "decoder_causal_attention": [1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0],
    }
    assert set(features) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(features[key], value, err_msg=key)
    assert features["decoder_causal_attention"].dtype == bool
    assert features["decoder_loss_weights"].dtype == np.float32
    no_prefix = fc.convert(packed, DECODER_CAUSAL)
    assert "decoder_causal_attention" not in no_prefix
    np.testing.assert_array_equal(no_prefix["decoder_loss_weights"],
                                  expected["decoder_loss_weights"])


example_lists = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 6), seeds), min_size=1, max_size=4)


def make_examples(specs):
    """(inputs length, targets length before EOS, seed) → objective-style outputs."""
    return [{"inputs": random_tokens(n_in, seed),
             "targets": np.append(random_tokens(n_out, seed + 1), EOS).astype(np.int32)}
            for n_in, n_out, seed in specs]


@SETTINGS
@given(specs=example_lists, pad=st.integers(0, 4))
def test_decoder_features_prefix_mask_and_loss_weights(specs, pad):
    examples = make_examples(specs)
    length = sum(len(e["inputs"]) + len(e["targets"]) for e in examples) + pad
    lengths = {"targets": length}
    packable = [fc.to_packable(e, DECODER, lengths) for e in examples]
    assert not any(t for _, t in packable)
    packed = pack([p for p, _ in packable], "decoder", fc.packing_lengths("decoder", lengths))
    features = fc.convert(packed, DECODER)

    start = 0
    for i, example in enumerate(examples):
        n_in, n_out = len(example["inputs"]), len(example["targets"])
        seg = slice(start, start + n_in + n_out)
        np.testing.assert_array_equal(features["decoder_segment_ids"][seg], i + 1)
        np.testing.assert_array_equal(features["decoder_positions"][seg],
                                      np.arange(n_in + n_out))
        np.testing.assert_array_equal(features["decoder_target_tokens"][seg],
                                      np.concatenate([example["inputs"], example["targets"]]))
        np.testing.assert_array_equal(
            features["decoder_input_tokens"][seg],
            np.concatenate([[0], example["inputs"], example["targets"][:-1]]))
        np.testing.assert_array_equal(features["decoder_loss_weights"][seg],
                                      np.r_[np.zeros(n_in), np.ones(n_out)])
        causal = features["decoder_causal_attention"][seg]
        if n_in:
            # Positions 0..len(inputs) inclusive: the inputs shifted right by one.
            np.testing.assert_array_equal(causal, np.arange(n_in + n_out) <= n_in)
        else:
            # No prefix: nothing beyond the first position (where it makes no difference).
            assert not causal[1:].any()
        start += n_in + n_out
    assert start == length - pad
    for key in ("decoder_loss_weights", "decoder_causal_attention", "decoder_segment_ids",
                "decoder_target_tokens", "decoder_input_tokens"):
        assert not features[key][start:].any(), key


@SETTINGS
@given(specs=example_lists, pad_in=st.integers(0, 3), pad_out=st.integers(0, 3))
def test_encoder_decoder_features(specs, pad_in, pad_out):
    examples = make_examples(specs)
    packable = [fc.to_packable(e, ENC_DEC, {"inputs": 99, "targets": 99})[0]
                for e in examples]
    # Empty inputs become a lone EOS for the encoder.
    for example, p in zip(examples, packable):
        expected_inputs = example["inputs"] if len(example["inputs"]) else [EOS]
        np.testing.assert_array_equal(p["inputs"], expected_inputs)
    lengths = {"inputs": sum(len(p["inputs"]) for p in packable) + pad_in,
               "targets": sum(len(p["targets"]) for p in packable) + pad_out}
    packed = pack(packable, "encoder_decoder", fc.packing_lengths("encoder_decoder", lengths))
    features = fc.convert(packed, ENC_DEC)
    assert set(features) == set(fc.batch_shapes(ENC_DEC, lengths, 1))

    enc = dec = 0
    for i, (example, p) in enumerate(zip(examples, packable)):
        n_in, n_out = len(p["inputs"]), len(p["targets"])
        e, d = slice(enc, enc + n_in), slice(dec, dec + n_out)
        np.testing.assert_array_equal(features["encoder_input_tokens"][e], p["inputs"])
        np.testing.assert_array_equal(features["encoder_segment_ids"][e], i + 1)
        np.testing.assert_array_equal(features["encoder_positions"][e], np.arange(n_in))
        np.testing.assert_array_equal(features["decoder_target_tokens"][d], example["targets"])
        np.testing.assert_array_equal(features["decoder_input_tokens"][d],
                                      np.concatenate([[0], example["targets"][:-1]]))
        np.testing.assert_array_equal(features["decoder_segment_ids"][d], i + 1)
        np.testing.assert_array_equal(features["decoder_positions"][d], np.arange(n_out))
        np.testing.assert_array_equal(features["decoder_loss_weights"][d], 1.0)
        enc += n_in
        dec += n_out
    assert not features["encoder_segment_ids"][enc:].any()
    assert not features["encoder_input_tokens"][enc:].any()
    assert not features["decoder_loss_weights"][dec:].any()
    assert not features["decoder_segment_ids"][dec:].any()


def test_decoder_feature_keys_match_batch_shapes():
    examples = make_examples([(2, 3, 0)])
    lengths = {"targets": 8}
    packed = pack([fc.to_packable(examples[0], DECODER, lengths)[0]], "decoder",
                  fc.packing_lengths("decoder", lengths))
    for fmt in (DECODER, DECODER_CAUSAL):
        features = fc.convert(packed, fmt)
        shapes = fc.batch_shapes(fmt, lengths, 2)
        assert set(features) == set(shapes)
        for key, ((_, width), dtype) in shapes.items():
            assert features[key].shape == (width,) and features[key].dtype == dtype, key


@SETTINGS
@given(n_in=st.integers(0, 10), n_out=st.integers(1, 10), length=st.integers(1, 15),
       length_in=st.integers(1, 10))
def test_to_packable_truncation(n_in, n_out, length, length_in):
    example = {"inputs": random_tokens(n_in, 0), "targets": random_tokens(n_out, 1)}
    features, truncated = fc.to_packable(example, DECODER, {"targets": length})
    assert truncated == (n_in + n_out > length)
    whole = np.concatenate([example["inputs"], example["targets"]])
    np.testing.assert_array_equal(features["targets"], whole[:length])
    np.testing.assert_array_equal(features["prefix"], (np.arange(len(whole)) < n_in)[:length])

    lengths = {"inputs": length_in, "targets": length}
    features, truncated = fc.to_packable(example, ENC_DEC, lengths)
    encoder = example["inputs"] if n_in else np.array([EOS])
    assert truncated == (len(encoder) > length_in or n_out > length)
    np.testing.assert_array_equal(features["inputs"], encoder[:length_in])
    np.testing.assert_array_equal(features["targets"], example["targets"][:length])

    # A causal-LM example (no inputs at all) in the encoder-decoder layout.
    features, _ = fc.to_packable({"targets": example["targets"]}, ENC_DEC, lengths)
    np.testing.assert_array_equal(features["inputs"], [EOS])


def test_check_layout_rejects_mismatched_feature_lengths():
    fc.check_layout("decoder", {"targets": 8})
    fc.check_layout("encoder_decoder", {"inputs": 8, "targets": 8})
    with pytest.raises(ValueError, match="keys"):
        fc.check_layout("decoder", {"inputs": 8, "targets": 8})
    with pytest.raises(ValueError, match="keys"):
        fc.check_layout("encoder_decoder", {"targets": 8})
    fc.check_layout("encoder", {"inputs": 8})
    with pytest.raises(ValueError, match="keys"):
        fc.check_layout("encoder", {"targets": 8})
    with pytest.raises(ValueError, match="layout"):
        fc.check_layout("bert", {"inputs": 8})


# ------------------------------------------------------------------------ raw_length
def test_span_corruption_raw_length():
    objective = objectives.SpanCorruption(vocab_size=VOCAB_SIZE)
    assert objective.raw_length({"inputs": 512, "targets": 114}) == 568
    assert objective.raw_length({"inputs": 512, "targets": 512}) == 568
    with pytest.raises(ValueError, match=r"targets length 113 .* 114"):
        objective.raw_length({"inputs": 512, "targets": 113})
    dense = objectives.SpanCorruption(noise_density=0.5, extra_ids=1000)
    assert dense.raw_length({"inputs": 512, "targets": 512}) == 766
    with pytest.raises(ValueError, match="128 noise spans but the vocabulary has only 100"):
        objectives.SpanCorruption(noise_density=0.5).raw_length({"inputs": 512, "targets": 512})


@SETTINGS
@given(inputs_length=st.integers(2, 1024), extra=st.integers(0, 5), seed=seeds,
       params=span_params)
def test_span_corruption_raw_length_chunks_fit_without_truncation(inputs_length, extra, seed,
                                                                  params):
    density, mean_span = params
    objective = objectives.SpanCorruption(noise_density=density,
                                          mean_noise_span_length=mean_span,
                                          vocab_size=VOCAB_SIZE, extra_ids=10**6)
    _, targets_length = objectives.random_spans_helper(inputs_length, density, mean_span)
    lengths = {"inputs": inputs_length, "targets": targets_length + extra}
    raw = objective.raw_length(lengths)
    for n in {raw, max(raw // 2, 1), 1}:  # full chunks and a document's short tail
        _, truncated = fc.to_packable(objective(random_tokens(n, seed), seed), ENC_DEC,
                                      lengths)
        assert not truncated, n


@SETTINGS
@given(length=st.integers(2, 2048), length_in=st.integers(1, 1024), seed=seeds)
def test_causal_and_prefix_lm_raw_length(length, length_in, seed):
    decoder = {"targets": length}
    encdec = {"inputs": length_in, "targets": length}

    # CausalLM: L - 1 tokens, then EOS, fill the targets exactly in either layout.
    assert objectives.CausalLM().raw_length(decoder) == length - 1
    assert objectives.CausalLM().raw_length(encdec) == length - 1
    out = objectives.CausalLM()(random_tokens(length - 1, seed), seed)
    assert len(out["targets"]) == length
    for fmt, lengths in ((DECODER, decoder), (ENC_DEC, encdec)):
        assert not fc.to_packable(out, fmt, lengths)[1]

    # PrefixLM, decoder-only: prefix + rest + EOS share the L positions, filled exactly.
    raw = objectives.PrefixLM().raw_length(decoder)
    assert raw == length - 1
    out = objectives.PrefixLM()(random_tokens(raw, seed), seed)
    assert len(out["inputs"]) + len(out["targets"]) == length
    assert not fc.to_packable(out, DECODER, decoder)[1]

    # PrefixLM, encoder-decoder: whatever the split, the prefix fits the encoder and the rest
    # + EOS the decoder.
    raw = objectives.PrefixLM().raw_length(encdec)
    assert raw >= 1
    tokens = random_tokens(raw, seed)
    for s in range(seed, seed + 20):
        out = objectives.PrefixLM()(tokens, s)
        assert not fc.to_packable(out, ENC_DEC, encdec)[1]
    # ... and it is the longest such chunk: one more token can overflow a side.
    longer = raw + 1
    assert longer - 1 > length_in or longer > length

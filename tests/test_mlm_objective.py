"""BERT's masked LM (Devlin et al. 2019, section 3.1 / appendix A.1) and the encoder layout.

Property tests of the pure objective on random token rows (selection count, 80/10/10 split,
loss positions, determinism, whole words), the feature converter's encoder rows, the loss's
choice of targets, and the pipeline end to end on the python_docs corpus.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from t5x_lite import trainer as trainer_lib
from t5x_lite.data import feature_converters as fc
from t5x_lite.data import masked_lm, pipeline
from t5x_lite.models.model_format import ModelFormat

EOS, MASK = 1, 8291
RANDOM_IDS = np.arange(3, 8192, dtype=np.int32)  # text pieces: no pad/eos/unk, no sentinels
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**31 - 1)
lengths = st.integers(1, 300)


def tokens_for(length, seed):
    return np.random.default_rng(seed).integers(3, 8192, length, dtype=np.int32)


def corrupt(tokens, seed, **kwargs):
    return masked_lm.masked_lm(tokens, seed, mask_id=MASK, random_ids=RANDOM_IDS, eos_id=EOS,
                                **kwargs)


def word_table(seed, start_rate=0.4):
    """A random "starts a word" table over the ids (≈ 2.5 pieces a word)."""
    return np.random.default_rng(seed).random(8292) < start_rate


# ------------------------------------------------------------------------ the objective
@SETTINGS
@given(length=lengths, seed=seeds)
def test_selects_exactly_bert_count_and_keeps_the_rest(length, seed):
    tokens = tokens_for(length, seed)
    out = corrupt(tokens, seed)
    selected = out["selected"].astype(bool)
    assert {k: len(v) for k, v in out.items()} == dict.fromkeys(out, length + 1)
    assert all(v.dtype == np.int32 for v in out.values())
    np.testing.assert_array_equal(out["targets"], np.append(tokens, EOS))
    assert out["inputs"][-1] == EOS and not selected[-1]
    assert selected.sum() == max(1, round(0.15 * length))
    # Unselected positions are untouched; only selected ones may differ (the loss positions).
    np.testing.assert_array_equal(out["inputs"][~selected], out["targets"][~selected])
    changed = out["inputs"][selected]
    assert np.isin(changed, np.append(RANDOM_IDS, MASK)).all()


@SETTINGS
@given(length=st.integers(40, 300), seed=seeds, other=seeds)
def test_deterministic_per_seed_and_seeds_differ(length, seed, other):
    tokens = tokens_for(length, seed)
    first, again = corrupt(tokens, seed), corrupt(tokens, seed)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    if other != seed:
        different = corrupt(tokens, other)
        assert any(not np.array_equal(first[k], different[k]) for k in ("inputs", "selected"))


@settings(max_examples=6, deadline=None)
@given(rates=st.sampled_from([(0.15, 0.8, 0.1), (0.15, 0.8, 0.1), (0.3, 0.5, 0.25),
                              (0.05, 1.0, 0.0)]), seed=seeds)
def test_selection_rate_and_replacement_split_over_many_rows(rates, seed):
    mask_rate, mask_share, random_share = rates
    rng = np.random.default_rng(seed)
    picked = mask = random = kept = total = 0
    for row in range(1500):
        tokens = tokens_for(int(rng.integers(100, 200)), seed + row)
        out = corrupt(tokens, int(rng.integers(2**31)), mask_rate=mask_rate,
                      mask_token_rate=mask_share, random_token_rate=random_share)
        selected = out["selected"].astype(bool)
        inputs, targets = out["inputs"][selected], out["targets"][selected]
        total += len(tokens)
        picked += selected.sum()
        mask += (inputs == MASK).sum()
        kept += (inputs == targets).sum()
        random += ((inputs != MASK) & (inputs != targets)).sum()
    assert picked / total == pytest.approx(mask_rate, abs=0.005)
    # ~30k selected positions at the defaults: 0.01 is over 5 standard deviations.
    assert mask / picked == pytest.approx(mask_share, abs=0.01)
    assert random / picked == pytest.approx(random_share, abs=0.01)
    assert kept / picked == pytest.approx(1 - mask_share - random_share, abs=0.01)


@SETTINGS
@given(length=lengths, seed=seeds, cap=st.integers(1, 20))
def test_max_predictions_caps_the_selection(length, seed, cap):
    out = corrupt(tokens_for(length, seed), seed, max_predictions=cap)
    assert out["selected"].sum() == min(cap, max(1, round(0.15 * length)))


@SETTINGS
@given(length=lengths, seed=seeds, table_seed=seeds)
def test_whole_word_masking_takes_whole_words(length, seed, table_seed):
    tokens, starts = tokens_for(length, seed), word_table(table_seed)
    out = corrupt(tokens, seed, word_starts=starts)
    selected = out["selected"][:-1].astype(bool)
    words = masked_lm.word_ids(tokens, starts)
    sizes = np.bincount(words)
    chosen = np.bincount(words, weights=selected)
    assert set(np.unique(chosen / sizes)) <= {0.0, 1.0}  # every word: all pieces or none
    target, count = masked_lm.num_to_predict(length), int(selected.sum())
    assert count <= target
    # BERT's greedy fill falls short only when no unchosen word fits the remainder.
    unchosen = sizes[chosen == 0]
    assert count == target or unchosen.min() > target - count
    np.testing.assert_array_equal(out["inputs"][:-1][~selected], tokens[~selected])


def test_whole_word_rate_over_many_rows():
    starts = word_table(0)
    picked = total = 0
    for seed in range(500):
        tokens = tokens_for(256, seed)
        picked += corrupt(tokens, seed, word_starts=starts)["selected"].sum()
        total += len(tokens)
    assert picked / total == pytest.approx(0.15, abs=0.01)


def test_word_ids_start_a_word_at_the_chunk_edge():
    starts = np.zeros(10, bool)
    starts[[5, 7]] = True
    np.testing.assert_array_equal(masked_lm.word_ids(np.array([3, 5, 3, 7, 3]), starts),
                                  [0, 1, 1, 2, 2])


def test_masked_lm_options_are_checked():
    with pytest.raises(ValueError, match="mask_rate"):
        masked_lm.MaskedLM(mask_rate=0.0)
    with pytest.raises(ValueError, match="sum to at most 1"):
        masked_lm.MaskedLM(mask_token_rate=0.8, random_token_rate=0.3)
    with pytest.raises(ValueError, match="pipeline binds"):
        masked_lm.MaskedLM()(np.arange(3, 10), 0)
    assert masked_lm.MaskedLM().raw_length({"inputs": 128}) == 127


# ------------------------------------------------------------- binding to the vocabulary
def test_bind_takes_the_mask_id_from_the_format(vocabulary):
    mask_id = vocabulary.sentinel_id(0)
    fmt = ModelFormat(architecture="encoder", mask_id=mask_id)
    bound = pipeline.bind_vocabulary(masked_lm.MaskedLM(whole_word=True), vocabulary, fmt)
    assert bound.mask_id == mask_id and bound.eos_id == vocabulary.eos_id
    ids = set(bound.random_ids.tolist())
    assert not ids & {vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id, mask_id}
    assert max(ids) < vocabulary.base_vocab_size  # no sentinels
    assert len(ids) > vocabulary.base_vocab_size - 10
    pieces = {vocabulary.id_to_piece(i) for i in np.flatnonzero(bound.word_starts)[:200]}
    assert all(p[0] in "\u2581<" or p[0].isspace() for p in pieces)
    word = vocabulary.encode("return")  # a word-start piece, then any continuations
    assert bound.word_starts[word[0]] and not bound.word_starts[word[1:]].any()
    with pytest.raises(ValueError, match="ModelFormat.mask_id"):
        masked_lm.MaskedLM().bind(vocabulary, ModelFormat(architecture="encoder"))
    with pytest.raises(ValueError, match="leave MaskedLM's unset"):
        masked_lm.MaskedLM(mask_id=5).bind(vocabulary, fmt)


# ------------------------------------------------------------------ the encoder layout
ENCODER = ModelFormat(architecture="encoder", mask_id=MASK)


def pack(examples, length):
    """Examples laid end to end in one row, as grain's packer hands them to `convert`."""
    packed = {}
    for key in fc.ENCODER_FEATURES:
        row = np.concatenate([ex[key] for ex in examples])
        segments = np.concatenate([np.full(len(ex[key]), i + 1) for i, ex in enumerate(examples)])
        positions = np.concatenate([np.arange(len(ex[key])) for ex in examples])
        padding = (0, length - len(row))
        packed[key] = np.pad(row, padding)
        packed[f"{key}_segment_ids"] = np.pad(segments, padding)
        packed[f"{key}_positions"] = np.pad(positions, padding)
    return packed


@SETTINGS
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4), pad=st.integers(0, 8),
       seed=seeds)
def test_encoder_features_weigh_the_selected_positions(sizes, pad, seed):
    lengths = {"inputs": sum(sizes) + len(sizes) + pad}
    examples = [fc.to_packable(corrupt(tokens_for(n, seed + i), seed + i), ENCODER, lengths)
                for i, n in enumerate(sizes)]
    assert not any(truncated for _, truncated in examples)
    packed = pack([ex for ex, _ in examples], lengths["inputs"])
    features = fc.convert(packed, ENCODER)
    shapes = fc.batch_shapes(ENCODER, lengths, 1)
    assert set(features) == set(shapes)
    assert all(features[k].shape == shapes[k][0][1:] and features[k].dtype == shapes[k][1]
               for k in shapes)
    np.testing.assert_array_equal(features["encoder_loss_weights"], packed["selected"])
    np.testing.assert_array_equal(features["encoder_segment_ids"], packed["inputs_segment_ids"])
    np.testing.assert_array_equal(features["encoder_target_tokens"], packed["targets"])
    assert features["encoder_loss_weights"].sum() == sum(map(masked_lm.num_to_predict, sizes))


def test_encoder_layout_checks():
    fc.check_layout("encoder", {"inputs": 8})
    with pytest.raises(ValueError, match="keys"):
        fc.check_layout("encoder", {"inputs": 8, "targets": 8})
    assert fc.packing_lengths("encoder", {"inputs": 8}) == {
        "inputs": 8, "targets": 8, "selected": 8}
    mlm_example = corrupt(tokens_for(5, 0), 0)
    with pytest.raises(ValueError, match="MaskedLM"):
        fc.to_packable({"targets": np.arange(3, 9)}, ENCODER, {"inputs": 8})
    with pytest.raises(ValueError, match="MaskedLM"):
        fc.to_packable(mlm_example, ModelFormat(architecture="decoder"), {"targets": 8})


# -------------------------------------------------------------------------- the loss
class ToyEncoder(nn.Module):
    """Logits from an embedding of each input token: enough to see which targets count."""

    @nn.compact
    def __call__(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None,
                 *, deterministic=True):
        return nn.Embed(16, 16)(encoder_input_tokens)


def test_loss_reads_the_encoder_targets_and_weights():
    rng = np.random.default_rng(0)
    batch = {"encoder_input_tokens": rng.integers(0, 16, (2, 6)).astype(np.int32),
             "encoder_target_tokens": rng.integers(0, 16, (2, 6)).astype(np.int32),
             "encoder_segment_ids": np.ones((2, 6), np.int32),
             "encoder_positions": np.tile(np.arange(6, dtype=np.int32), (2, 1)),
             "encoder_loss_weights": (rng.random((2, 6)) < 0.5).astype(np.float32)}
    assert set(trainer_lib.model_inputs(batch)) == {
        "encoder_input_tokens", "encoder_segment_ids", "encoder_positions"}
    module = ToyEncoder()
    params = module.init(jax.random.key(0), **trainer_lib.model_inputs(batch))["params"]
    loss, sums = trainer_lib.TokenCrossEntropy().sums(module, params, batch, None)
    logits = module.apply({"params": params}, batch["encoder_input_tokens"])
    token_loss = -jnp.take_along_axis(jax.nn.log_softmax(logits),
                                      batch["encoder_target_tokens"][..., None], -1)[..., 0]
    weights = batch["encoder_loss_weights"]
    assert float(sums["tokens"]) == weights.sum()
    assert float(loss) == pytest.approx(float((token_loss * weights).sum()), rel=1e-5)


# ---------------------------------------------------------------------- the pipeline
@pytest.mark.parametrize("whole_word", [False, True])
def test_pipeline_masks_about_fifteen_percent(data_dir, vocabulary, whole_word):
    fmt = ModelFormat(architecture="encoder", mask_id=vocabulary.sentinel_id(0))
    lengths = {"inputs": 64}
    objective = masked_lm.MaskedLM(whole_word=whole_word)
    dataset, _ = pipeline.make_dataset(
        pipeline.DatasetConfig(data_dir=data_dir), vocabulary, feature_lengths=lengths,
        batch_size=4, objective=objective, model_format=fmt, seed=3)
    starts = masked_lm.word_start_table(vocabulary)
    shapes = fc.batch_shapes(fmt, lengths, 4)
    weighted = real = 0
    iterator = iter(dataset)
    for _ in range(4):
        batch = next(iterator)
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == shapes
        for row in range(4):
            weighted_row, real_row = check_row({k: v[row] for k, v in batch.items()}, fmt,
                                               starts if whole_word else None)
            weighted, real = weighted + weighted_row, real + real_row
    assert 0.12 < weighted / real < 0.19


def check_row(row, fmt, word_starts):
    """Checks one packed row segment by segment; returns (weighted, non-padding) counts."""
    inputs, targets = row["encoder_input_tokens"], row["encoder_target_tokens"]
    segments, weights = row["encoder_segment_ids"], row["encoder_loss_weights"]
    assert not weights[segments == 0].any()
    # Only weighted positions may differ from the original; a weighted one may not (10%).
    assert (weights[inputs != targets] == 1).all()
    assert (weights[inputs == fmt.mask_id] == 1).all()
    for segment in np.unique(segments[segments > 0]):
        where = np.flatnonzero(segments == segment)
        np.testing.assert_array_equal(where, np.arange(where[0], where[-1] + 1))
        np.testing.assert_array_equal(row["encoder_positions"][where], np.arange(len(where)))
        assert targets[where[-1]] == fmt.eos_id and weights[where[-1]] == 0
        chosen = weights[where[:-1]].astype(bool)
        expected = masked_lm.num_to_predict(len(where) - 1)
        if word_starts is None:
            assert chosen.sum() == expected
        else:
            words = masked_lm.word_ids(targets[where[:-1]], word_starts)
            share = np.bincount(words, weights=chosen) / np.bincount(words)
            assert set(np.unique(share)) <= {0.0, 1.0} and chosen.sum() <= expected
    return int(weights.sum()), int((segments > 0).sum())

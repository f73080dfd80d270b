"""BERT's next-sentence prediction: sentence pairs (data/next_sentence.py), the pair rows the
MaskedLM objective makes of them, the pipeline that pairs chunks with other documents
(checkpointable), and the loss (the masked LM's mean plus the pairs' mean, as BERT's)."""
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from t5x_lite import partitioning, trainer as trainer_lib
from t5x_lite.data import feature_converters as converters
from t5x_lite.data import next_sentence as nsp
from t5x_lite.data import masked_lm, pipeline
from t5x_lite.errors import InputError
from t5x_lite.models import encoder, model_format

VOCAB = 40
WORD_STARTS = np.arange(VOCAB) % 3 == 0  # every third id starts a word


@settings(max_examples=200, deadline=None)
@given(tokens=st.lists(st.integers(3, VOCAB - 1), min_size=2, max_size=30),
       other=st.one_of(st.none(), st.lists(st.integers(3, VOCAB - 1), max_size=40)),
       seed=st.integers(0, 2**31 - 1), words=st.booleans())
def test_sentence_pair(tokens, other, seed, words):
    tokens = np.asarray(tokens, np.int32)
    starts = WORD_STARTS if words else None
    first, second, label = nsp.sentence_pair(tokens, seed, None if other is None
                                             else np.asarray(other, np.int32), word_starts=starts)
    again = nsp.sentence_pair(tokens, seed, other, word_starts=starts)
    assert np.array_equal(first, again[0]) and np.array_equal(second, again[1])
    cut = len(first)
    assert 1 <= cut < len(tokens) and np.array_equal(first, tokens[:cut])
    if words and WORD_STARTS[tokens[1:]].any():
        assert WORD_STARTS[tokens[cut]]  # A ends where a word starts
    if other is None:
        assert label == nsp.IS_NEXT and np.array_equal(second, tokens[cut:])
        return
    assert label == nsp.NOT_NEXT
    assert len(second) == min(len(tokens) - cut, len(other))  # as long as the rest, if it can
    spans = [other[i:i + len(second)] for i in range(len(other) - len(second) + 1)]
    assert any(np.array_equal(second, span) for span in spans)  # a contiguous span of it


def test_masked_lm_pair_rows():
    """A EOS B EOS: token types 0 up to the first EOS, the label at the first position, the
    masked-LM selection count of A+B and never a separator selected."""
    objective = masked_lm.MaskedLM(next_sentence=True, mask_id=VOCAB - 1, eos_id=1,
                                    random_ids=np.arange(3, VOCAB - 1, dtype=np.int32),
                                    word_starts=WORD_STARTS)
    rng = np.random.default_rng(0)
    for seed in range(200):
        tokens = rng.integers(3, VOCAB - 1, rng.integers(2, 60)).astype(np.int32)
        other = rng.integers(3, VOCAB - 1, 80).astype(np.int32) if seed % 2 else None
        row = objective(tokens, seed, other)
        first, second, label = nsp.sentence_pair(tokens, seed + 1, other,
                                                 word_starts=WORD_STARTS)
        assert set(row) == set(converters.ENCODER_FEATURES + nsp.PAIR_FEATURES)
        cut = len(first)
        assert np.array_equal(row["targets"], np.concatenate([first, [1], second, [1]]))
        assert row["inputs"][cut] == row["inputs"][-1] == 1
        assert not row["selected"][cut] and not row["selected"][-1]
        assert row["selected"].sum() == masked_lm.num_to_predict(len(first) + len(second))
        assert np.array_equal(row["token_types"],
                              np.arange(len(row["targets"])) > cut)
        assert row["next_sentence"][0] == 1 + label and not row["next_sentence"][1:].any()
        assert label == (nsp.NOT_NEXT if other is not None else nsp.IS_NEXT)
    with pytest.raises(ValueError, match="concatenate_documents=False"):
        masked_lm.MaskedLM(next_sentence=True, concatenate_documents=True)


def test_other_documents_are_never_the_chunks_own():
    documents = [np.full(5, i, np.int32) for i in range(6)] + [None]
    lookup = grain.MapDataset.source(documents)
    chunks = grain.MapDataset.source([(i % 6, np.full(5, i % 6, np.int32)) for i in range(3000)])
    paired = chunks.to_iter_dataset().random_map(nsp.WithOtherDocument(lookup), seed=3)
    others = []
    for (index, _), element in zip(chunks, paired):
        if element["other"] is not None:
            assert element["other"][0] != index  # another document, never a skipped record
            others.append(int(element["other"][0]))
    assert abs(len(others) / 3000 - nsp.NOT_NEXT_RATE) < 0.04  # 4 sigma is 0.037
    assert set(others) == set(range(6))
    repeat = chunks.to_iter_dataset().random_map(nsp.WithOtherDocument(lookup), seed=3)
    assert [None if e["other"] is None else int(e["other"][0]) for e in repeat][:50] == \
        [None if e["other"] is None else int(e["other"][0]) for e in paired][:50]


FMT = model_format.ModelFormat(architecture="encoder", mask_id=8291)
LENGTHS = {"inputs": 64}


def _pairs_dataset(data_dir, vocabulary, seed=0):
    return pipeline.make_dataset(
        pipeline.DatasetConfig(data_dir=data_dir), vocabulary, feature_lengths=LENGTHS,
        batch_size=4, objective=masked_lm.MaskedLM(next_sentence=True), model_format=FMT,
        seed=seed, shard_index=0, shard_count=1)[0]


def test_pipeline_makes_checkpointable_pair_rows(data_dir, vocabulary):
    iterator = iter(_pairs_dataset(data_dir, vocabulary))
    batches = [next(iterator) for _ in range(3)]
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(12)]
    resumed = iter(_pairs_dataset(data_dir, vocabulary))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert all(np.array_equal(want[k], got[k]) for k in want)
    batch = batches[0]
    assert set(batch) == set(converters.batch_shapes(FMT, LENGTHS, 4, sentence_pairs=True))
    weights = batch[converters.NEXT_SENTENCE_TARGETS[1]]
    starts = (batch["encoder_positions"] == 0) & (batch["encoder_segment_ids"] > 0)
    assert np.array_equal(weights > 0, starts)  # one label where each packed pair starts
    labels = np.concatenate([b[converters.NEXT_SENTENCE_TARGETS[0]][
        b[converters.NEXT_SENTENCE_TARGETS[1]] > 0] for b in batches + expected])
    assert 0.3 < labels.mean() < 0.7 and len(labels) > 60  # about half NotNext
    types = batch[converters.TOKEN_TYPES]
    eos = batch["encoder_target_tokens"] == vocabulary.eos_id
    for row in range(4):  # within a pair, types go 0...0 1...1, switching after the first EOS
        for segment in set(batch["encoder_segment_ids"][row]) - {0}:
            where = batch["encoder_segment_ids"][row] == segment
            first_eos = np.argmax(eos[row][where])
            assert np.array_equal(types[row][where], np.arange(where.sum()) > first_eos)


def test_loss_is_the_masked_lm_mean_plus_the_pair_mean(data_dir, vocabulary):
    config = encoder.EncoderConfig(vocab_size=8320, embed_dim=32, num_layers=1, num_heads=2,
                                   head_dim=16, mlp_dim=64, max_length=64,
                                   next_sentence_head=True, format=FMT)
    module = encoder.EncoderLM(config)
    batch = next(iter(_pairs_dataset(data_dir, vocabulary, seed=1)))
    shapes = converters.batch_shapes(FMT, LENGTHS, 4, sentence_pairs=True)
    mesh = partitioning.make_mesh((1, 1, 1))
    trainer = trainer_lib.Trainer(module, optax.sgd(0.0), lambda step: 0.0, mesh,
                                  partitioning.DEFAULT_RULES, batch_shapes=shapes)
    assert isinstance(trainer.loss, trainer_lib.MaskedLMAndNextSentence)
    params = trainer.create_state(0).params
    assert set(params["next_sentence_head"]) == {"pooler", "classifier"}
    loss, sums = trainer.loss.sums(module, params, batch, None)

    inputs = {k: batch[k] for k in ("encoder_input_tokens", "encoder_segment_ids",
                                     "encoder_positions", converters.TOKEN_TYPES)}
    logits, hidden = module.apply({"params": params}, **inputs, outputs="both")
    pair_logits = module.apply({"params": params}, hidden, method="next_sentence_logits")

    def mean_nll(logits, targets, weights):
        log_probs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
        nll = -np.take_along_axis(log_probs, np.asarray(targets)[..., None], -1)[..., 0]
        return float((nll * weights).sum() / weights.sum())

    mlm = mean_nll(logits, batch["encoder_target_tokens"], batch["encoder_loss_weights"])
    pairs = mean_nll(pair_logits, *(batch[k] for k in converters.NEXT_SENTENCE_TARGETS))
    np.testing.assert_allclose(float(loss), mlm + pairs, rtol=1e-5)
    metrics = trainer.loss.normalise(sums)
    np.testing.assert_allclose(float(metrics["next_sentence_loss"]), pairs, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), mlm, rtol=1e-5)
    summary = trainer_lib.summarize_eval(jax.device_get(sums))
    assert summary["next_sentence_accuracy"] == pytest.approx(float(
        metrics["next_sentence_accuracy"]))


def test_objective_and_head_must_agree(tmp_path, data_dir, vocabulary):
    from t5x_lite import train_loop
    config = encoder.EncoderConfig(vocab_size=8320, embed_dim=32, num_layers=1, num_heads=2,
                                   head_dim=16, mlp_dim=64, max_length=64, format=FMT)
    data = pipeline.DatasetConfig(data_dir=data_dir)
    with pytest.raises(InputError, match="next_sentence_head=False"):
        train_loop.train(model_dir=str(tmp_path), model=encoder.EncoderLM(config),
                         vocabulary=vocabulary, train_data=data, eval_data=data,
                         objective=masked_lm.MaskedLM(next_sentence=True), train_steps=1,
                         batch_size=8, feature_lengths=LENGTHS, optimizer=None,
                         learning_rate=None)

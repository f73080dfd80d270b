"""Scoring and rank classification against a slow per-example reference; text metrics."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import evaluation, partitioning
from t5x_lite.models import decoder, model_format
from t5x_lite.models import encoder_decoder as ed

VOCAB = 64
LENGTHS = dict(inputs_length=6, targets_length=5)
REF_LENGTH = 16  # longer than any reference row
# Different lengths, an example without inputs, one filling both lengths exactly.
EXAMPLES = [
    {"inputs": [5, 9, 13], "targets": [7, 8, 1]},
    {"inputs": [], "targets": [20, 21, 22, 23]},
    {"inputs": [40, 41, 42, 43, 44, 45], "targets": [3, 4, 5, 6, 1]},
    {"inputs": [11], "targets": [12]},
    {"inputs": [30, 31], "targets": [33, 34, 1]},
]


@pytest.fixture(scope="module")
def decoder_model():
    config = decoder.DecoderConfig(vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=4,
                                   head_dim=8, mlp_dim=64)
    model = decoder.DecoderLM(config)
    params = jax.jit(model.init)(jax.random.key(1), jnp.ones((1, 8), jnp.int32))["params"]
    return model, nn.unbox(params)


@pytest.fixture(scope="module")
def t5_model():
    config = ed.EncoderDecoderConfig(vocab_size=VOCAB, embed_dim=32, num_encoder_layers=2,
                                     num_decoder_layers=2, num_heads=4, head_dim=8, mlp_dim=64)
    model = ed.EncoderDecoder(config)
    ones = jnp.ones((1, 8), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(2), ones, ones)["params"]
    return model, nn.unbox(params)


@functools.cache
def _apply(model):
    return jax.jit(lambda params, *args, **kwargs: model.apply({"params": params}, *args,
                                                                **kwargs))


def reference_token_log_probs(model, params, layout, inputs, targets, bidirectional=False,
                              start=0):
    """Each target token's log-probability from the full model's logits for the example alone.

    No padding, segment ids or batching: the decoder row is `start` + inputs + targets,
    followed only by random tokens (up to a fixed length, so one compile serves every
    example), which a causal decoder cannot see from earlier positions.
    """
    junk = np.random.default_rng(len(inputs)).integers(2, VOCAB, REF_LENGTH).astype(np.int32)
    if layout == "decoder":
        tokens = np.asarray(list(inputs) + list(targets), np.int32)
        shifted = np.concatenate([[start], tokens, junk])[:REF_LENGTH].astype(np.int32)
        # T5X: the inputs and the first target's query position attend bidirectionally.
        prefix = (np.arange(REF_LENGTH) <= len(inputs)) & bool(bidirectional and inputs)
        logits = _apply(model)(params, shifted[None], decoder_causal_attention=prefix[None])
        positions = np.arange(len(inputs), len(tokens))
    else:
        encoder_inputs = np.asarray(list(inputs) or [1], np.int32)
        shifted = np.concatenate([[0], targets, junk])[:REF_LENGTH].astype(np.int32)
        logits = _apply(model)(params, encoder_inputs[None], shifted[None])
        positions = np.arange(len(targets))
    log_probs = np.asarray(jax.nn.log_softmax(logits[0].astype(np.float32)))
    return log_probs[positions, np.asarray(targets)]


def _model(layout, decoder_model, t5_model):
    return decoder_model if layout == "decoder" else t5_model


def with_format(model, **fields):
    """The same model (same params) reading its rows another way."""
    fmt = model_format.ModelFormat(**fields)
    return model.clone(config=dataclasses.replace(model.config, format=fmt))


@pytest.mark.parametrize("layout,bidirectional,bos", [
    ("decoder", True, None), ("decoder", False, None), ("decoder", False, 3),
    ("encoder_decoder", True, None)])
def test_score_matches_slow_reference(layout, bidirectional, bos, decoder_model, t5_model):
    """Scores follow the model's format: its start id (shift-right 0 or a BOS) and its
    attention over the inputs (the prefix LM's bidirectional, or causal)."""
    model, params = _model(layout, decoder_model, t5_model)
    if layout == "decoder":
        model = with_format(model, bos_id=bos,
                            inputs_attention="bidirectional" if bidirectional else "causal")
    results = evaluation.score(model, params, EXAMPLES, batch_size=2, **LENGTHS)
    assert len(results) == len(EXAMPLES)
    for example, result in zip(EXAMPLES, results):
        expected = reference_token_log_probs(model, params, layout, example["inputs"],
                                             example["targets"], bidirectional, bos or 0)
        assert result["num_tokens"] == len(example["targets"])
        np.testing.assert_allclose(result["log_likelihood"], expected.sum(), atol=1e-4)
        np.testing.assert_allclose(result["mean_log_likelihood"], expected.mean(), atol=1e-4)


def test_a_causal_decoder_is_scored_causally(decoder_model):
    """The default decoder format reads inputs causally (as CausalLM trains it), and a
    prefix-LM format changes the scores of every example with inputs."""
    model, params = decoder_model
    assert model_format.of(model).inputs_attention == "causal"
    scores = [evaluation.score(with_format(model, inputs_attention=attention), params, EXAMPLES,
                               batch_size=2, **LENGTHS)
              for attention in ("bidirectional", "causal")]
    default = evaluation.score(model, params, EXAMPLES, batch_size=2, **LENGTHS)
    assert [r["log_likelihood"] for r in default] == [r["log_likelihood"] for r in scores[1]]
    with_inputs = [i for i, e in enumerate(EXAMPLES) if len(e["inputs"]) > 1]
    for i in with_inputs:
        assert abs(scores[0][i]["log_likelihood"] - scores[1][i]["log_likelihood"]) > 1e-4


@pytest.mark.parametrize("layout", ["decoder", "encoder_decoder"])
def test_score_does_not_depend_on_mesh(layout, decoder_model, t5_model):
    """Batch size 2 without a mesh, and 4 on a 1-device and an 8-device (2, 2, 2) mesh."""
    model, params = _model(layout, decoder_model, t5_model)
    runs = [evaluation.score(model, params, EXAMPLES, batch_size=2, **LENGTHS)]
    for shape in [(1, 1, 1), (2, 2, 2)]:
        runs.append(evaluation.score(model, params, EXAMPLES, batch_size=4,
                                     mesh=partitioning.make_mesh(shape),
                                     rules=partitioning.DEFAULT_RULES, **LENGTHS))
    for run in runs[1:]:
        assert [r["num_tokens"] for r in run] == [r["num_tokens"] for r in runs[0]]
        np.testing.assert_allclose([r["log_likelihood"] for r in run],
                                   [r["log_likelihood"] for r in runs[0]], atol=1e-5)


def test_every_target_token_counts_whatever_its_id(decoder_model):
    """Loss weights come from the row's mask, not from `token > 0`: in GPT-2's BPE id 0 is a
    real token ('!'), and it is scored like any other."""
    model, params = decoder_model
    result = evaluation.score(model, params, [{"inputs": [5], "targets": [0, 7, 0]}],
                              batch_size=1, **LENGTHS)[0]
    assert result["num_tokens"] == 3
    expected = reference_token_log_probs(model, params, "decoder", [5], [0, 7, 0], False)
    np.testing.assert_allclose(result["log_likelihood"], expected.sum(), atol=1e-4)


def test_ids_and_positions_the_model_cannot_read_are_one_line_errors(decoder_model):
    model, params = decoder_model
    with pytest.raises(ValueError, match=r"example 0: token id 64 is outside the model's "
                                         r"vocabulary \(vocab_size=64\)"):
        evaluation.score(model, params, [{"inputs": [5], "targets": [64]}], batch_size=1,
                         **LENGTHS)
    learned = decoder.DecoderLM(dataclasses.replace(model.config, position_embedding="learned",
                                                    max_length=4))
    with pytest.raises(ValueError, match="5 positions exceed the model's learned position "
                                         r"table \(max_length=4\)"):
        evaluation.score(learned, None, [{"inputs": [5, 6], "targets": [7, 8, 9]}],
                         batch_size=1, **LENGTHS)


def test_score_rejects_what_it_cannot_score(decoder_model):
    model, params = decoder_model
    too_long = [{"inputs": [5] * 7, "targets": [6]}]
    with pytest.raises(ValueError, match="inputs_length"):
        evaluation.score(model, params, too_long, batch_size=1, **LENGTHS)
    with pytest.raises(ValueError, match="no targets"):
        evaluation.score(model, params, [{"inputs": [5], "targets": []}], batch_size=1,
                         **LENGTHS)
    with pytest.raises(ValueError, match="multiple of the 4 batch shards"):
        evaluation.score(model, params, EXAMPLES, batch_size=2,
                         mesh=partitioning.make_mesh((2, 2, 2)), **LENGTHS)


def test_rank_classification_picks_the_likeliest_option(decoder_model):
    model, params = decoder_model
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(4):
        options = [rng.integers(3, VOCAB, n).tolist() for n in (1, 2, 4)]
        examples.append({"inputs": rng.integers(3, VOCAB, 4).tolist(), "options": options})
    reference = [[reference_token_log_probs(model, params, "decoder", e["inputs"], o)
                  for o in e["options"]] for e in examples]
    for normalize, reduce in [(False, np.sum), (True, np.mean)]:
        best = [int(np.argmax([reduce(t) for t in r])) for r in reference]
        # Example 0: the best option is correct; 1: a wrong one only; 2: several, best among
        # them; 3: several, best not among them.
        wrong = [(b + 1) % 3 for b in best]
        correct = [[best[0]], [wrong[1]], [wrong[2], best[2]], [wrong[3], (best[3] + 2) % 3]]
        labelled = [{**e, "correct": c} for e, c in zip(examples, correct)]
        result = evaluation.rank_classification(model, params, labelled, batch_size=2,
                                                length_normalize=normalize, **LENGTHS)
        assert result["predictions"] == best
        assert result["accuracy"] == 0.5
        np.testing.assert_allclose(result["scores"],
                                   [[reduce(t) for t in r] for r in reference], atol=1e-4)


def test_exact_match_ignores_surrounding_whitespace():
    assert evaluation.exact_match([" a b\n", "c", "d"], ["a b", "c ", "e"]) == {
        "exact_match": pytest.approx(200 / 3)}


def test_bleu():
    sentences = ["the quick brown fox jumps over the lazy dog", "a second sentence here"]
    assert evaluation.bleu(sentences, sentences)["bleu"] == pytest.approx(100.0)
    assert evaluation.bleu(["zzz yyy xxx www"], ["the quick brown fox"])["bleu"] < 1.0
    # Several references per example: matching either one counts.
    multi = evaluation.bleu(sentences, [["nothing alike at all", s] for s in sentences])
    assert multi["bleu"] == pytest.approx(100.0)


def test_rouge_against_hand_computation():
    # rouge1: 3 of 3 predicted unigrams match, 3 of 6 reference ones: F = 2PR/(P+R) = 2/3.
    # rouge2: bigrams "the cat", "cat sat" match: P = 2/2, R = 2/5, F = 4/7.
    scores = evaluation.rouge(["The cat sat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(200 / 3)
    assert scores["rouge2"] == pytest.approx(400 / 7)
    # rougeLsum takes each line of the reference as a sentence: both lines are found in
    # order in the prediction, though the plain LCS of the two texts is only 2 of 4 tokens.
    split = evaluation.rouge(["c d a b"], ["a b\nc d"], rouge_types=("rougeL", "rougeLsum"))
    assert split == {"rougeL": pytest.approx(50.0), "rougeLsum": pytest.approx(100.0)}
    # The mean over examples.
    assert evaluation.rouge(["a", "b"], ["a", "c"], rouge_types=("rouge1",)) == {
        "rouge1": pytest.approx(50.0)}

"""Prompt + response rows read as training and scoring read them; the scalar head; sampling
inside jit."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import decoding, evaluation
from t5x_lite.models import decoder, heads, model_format
from t5x_lite.models import encoder_decoder as ed
from t5x_lite.rlhf import preference_arrays, sequences

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13], [3]]
RESPONSES = [[20, 21, 1], [22, 1], [23, 24, 25, 26]]  # the last has no EOS


def decoder_model(bidirectional=False):
    fmt = model_format.ModelFormat(inputs_attention="bidirectional" if bidirectional else "causal")
    config = decoder.DecoderConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4,
                                   head_dim=8, mlp_dim=64, format=fmt)
    module = decoder.DecoderLM(config)
    params = nn.unbox(module.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"])
    return module, params


def t5_model():
    config = ed.EncoderDecoderConfig(vocab_size=64, embed_dim=32, num_encoder_layers=2,
                                     num_decoder_layers=2, num_heads=4, head_dim=8, mlp_dim=64)
    module = ed.EncoderDecoder(config)
    params = nn.unbox(module.init(jax.random.key(1), jnp.ones((1, 8), jnp.int32),
                                  jnp.ones((1, 4), jnp.int32))["params"])
    return module, params


MODELS = {"decoder": decoder_model, "prefix_lm": lambda: decoder_model(True), "t5": t5_model}


def padded(rows, width):
    out = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out, np.asarray([len(r) for r in rows], np.int32)


def response_logits(name):
    """A model of `MODELS`, the rows of (PROMPTS, RESPONSES) and its logits at the response."""
    module, params = MODELS[name]()
    prompt, prompt_lengths = padded(PROMPTS, 6)
    response, response_lengths = padded(RESPONSES, 5)
    rows = sequences.build(model_format.of(module), prompt, prompt_lengths, response,
                           response_lengths)
    response = jnp.asarray(response)
    return module, params, rows, response, sequences.response_outputs(module, params, rows)


@pytest.mark.parametrize("name", MODELS)
def test_response_logprobs_equal_scoring(name):
    """Summed response log-probs from the rows equal `evaluation.score` of (prompt, response):
    the reinforcement-learning path reads examples exactly as training and scoring do."""
    module, params, rows, response, logits = response_logits(name)
    logps, entropy = sequences.response_logprobs(logits, rows, response)
    # The output layer run only at the response's positions gives what the full one does.
    full = sequences.at_response(sequences.apply(module, params, rows), rows)
    np.testing.assert_allclose(logits, full, rtol=1e-5, atol=1e-5)
    scored = evaluation.score(module, params, [{"inputs": p, "targets": r}
                                               for p, r in zip(PROMPTS, RESPONSES)],
                              batch_size=3, inputs_length=6, targets_length=5)
    np.testing.assert_allclose(np.sum(logps, 1), [s["log_likelihood"] for s in scored],
                               rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(logps)[np.asarray(~rows.mask)] == 0)
    assert np.all(np.asarray(entropy)[np.asarray(rows.mask)] > 0)


@pytest.mark.parametrize("name", MODELS)
def test_temperature_scales_logits(name):
    module, params, rows, response, logits = response_logits(name)
    hot, _ = sequences.response_logprobs(logits, rows, response, temperature=0.5)
    by_hand, _ = sequences.response_logprobs(logits / 0.5, rows, response)
    np.testing.assert_allclose(hot, by_hand, rtol=1e-6)


def test_reward_is_read_at_the_last_real_token_whichever_side_is_padded():
    """A reward model's score is the head at the EOS: right- and left-padded rows of the same
    sequences give the same rewards."""
    module, params = decoder_model()
    reward_model = heads.ScalarHead(module)
    head_params = nn.unbox(reward_model.init(jax.random.key(3), jnp.ones((1, 8), jnp.int32))
                           ["params"])
    sequences_ = [[0, 5, 6, 7, 20, 1], [0, 9, 1], [0, 3, 4, 5, 6, 7, 8, 1]]
    width = 8

    def features(left: bool):
        tokens = np.zeros((3, width), np.int32)
        segments = np.zeros((3, width), np.int32)
        positions = np.zeros((3, width), np.int32)
        for i, seq in enumerate(sequences_):
            where = slice(width - len(seq), width) if left else slice(0, len(seq))
            tokens[i, where], segments[i, where] = seq, 1
            positions[i, where] = np.arange(len(seq))
        return {"decoder_input_tokens": tokens, "decoder_segment_ids": segments,
                "decoder_positions": positions}

    scores = []
    for left in (False, True):
        f = features(left)
        values = reward_model.apply({"params": head_params}, **f)
        scores.append(np.asarray(sequences.at_last_token(values, f)))
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5, atol=1e-6)
    # ...and it is the value at the EOS itself: a different last token changes it.
    other = features(False)
    other["decoder_input_tokens"][0, 5] = 7
    changed = reward_model.apply({"params": head_params}, **other)
    assert sequences.at_last_token(changed, other)[0] != pytest.approx(scores[0][0])


def test_head_trunk_is_an_lm_without_its_output_layer():
    module, params = decoder_model()
    reward_model = heads.ScalarHead(module)
    fresh = nn.unbox(reward_model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"])
    assert "lm_head" not in fresh["trunk"] and "lm_head" in params
    initial = heads.with_trunk(fresh, params)
    assert jax.tree.structure(initial) == jax.tree.structure(fresh)
    np.testing.assert_array_equal(initial["trunk"]["final_norm"]["scale"],
                                  params["final_norm"]["scale"])
    policy = heads.ScalarHead(module, with_logits=True)
    logits, values = policy.apply(
        {"params": {"trunk": params, "head": initial["head"]}}, jnp.ones((2, 4), jnp.int32))
    assert logits.shape == (2, 4, 64) and values.shape == (2, 4)
    np.testing.assert_allclose(logits, module.apply({"params": params},
                                                    jnp.ones((2, 4), jnp.int32)), rtol=1e-6)
    assert model_format.of(policy) == model_format.of(module)


@pytest.mark.parametrize("name", ["decoder", "t5"])
def test_sample_inside_jit_matches_decode(name):
    """`decoding.sample` under an outer jit gives what `decode` gives for the same seeds,
    with lengths counting the EOS."""
    module, params = MODELS[name]()
    prompt, prompt_lengths = padded(PROMPTS, 6)
    strategy = decoding.Strategy(temperature=1.0)
    seeds = np.asarray([hash((7, 0)) % (2**31)] * 3, np.uint32)  # decode's seed for (7, 0)

    @jax.jit
    def rollout(params, prompt, prompt_lengths, seeds):
        return decoding.sample(module, params, prompt, prompt_lengths, seeds,
                               strategy=strategy, max_new_tokens=7)

    tokens, lengths = rollout(params, prompt, prompt_lengths, seeds)
    key = "encoder_inputs" if name == "t5" else "prompts"
    expected = decoding.decode(module, params, **{key: PROMPTS}, strategy=strategy,
                               max_new_tokens=7, seeds=7)["tokens"][:, 0]
    np.testing.assert_array_equal(tokens, expected)
    for row, length in zip(np.asarray(tokens), np.asarray(lengths)):
        ends = np.flatnonzero(row == 1)
        assert length == (ends[0] + 1 if len(ends) else 7)


def test_prompts_are_read_as_instruction_tuning_wrote_its_inputs():
    """An SFT policy tuned on inputs + EOS (instruction_pipeline.encode_pair) sees its RL
    prompts the same way; a raw-text continuation prompt has no EOS; an encoder's inputs
    always end with EOS."""
    import rlhf_fixtures as fx
    from t5x_lite.data import instruction_pipeline
    from t5x_lite.rlhf import jobs

    vocab = fx.CharVocabulary()
    decoder_lm, t5 = decoder_model()[0], t5_model()[0]
    inputs, _ = instruction_pipeline.encode_pair(vocab, "the film was", "great", vocab.eos_id)
    for model, instruction, expected in [(decoder_lm, True, inputs),
                                         (decoder_lm, False, inputs[:-1]),
                                         (t5, False, inputs)]:
        arrays = preference_arrays.encode_prompts(["the film was"], vocab, prompt_length=32,
                                            prompt_eos=jobs.prompt_eos(model, instruction))
        length = arrays["prompt_lengths"][0]
        assert arrays["prompt"][0, :length].tolist() == expected

"""Cached decoding against slow, obviously correct references on tiny random models."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import decoding, partitioning
from t5x_lite.models import model_format, decoder, incremental
from t5x_lite.models import encoder_decoder as ed

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13], [3]]


def decoder_model(vocab=64, scan=True):
    config = decoder.DecoderConfig(vocab_size=vocab, embed_dim=32, num_layers=2, num_heads=4,
                                   num_kv_heads=2, head_dim=8, mlp_dim=64, scan_layers=scan)
    module = decoder.DecoderLM(config)
    params = nn.unbox(module.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"])
    return module, params


def t5_model(vocab=64, scan=True):
    config = ed.EncoderDecoderConfig(vocab_size=vocab, embed_dim=32, num_encoder_layers=2,
                                     num_decoder_layers=2, num_heads=4, head_dim=8, mlp_dim=64,
                                     scan_layers=scan)
    module = ed.EncoderDecoder(config)
    params = nn.unbox(module.init(jax.random.key(1), jnp.ones((1, 8), jnp.int32),
                                  jnp.ones((1, 4), jnp.int32))["params"])
    return module, params


def run(module, params, **kwargs):
    if module.architecture == "encoder_decoder":
        return decoding.decode(module, params, encoder_inputs=PROMPTS, **kwargs)
    return decoding.decode(module, params, PROMPTS, **kwargs)


@pytest.mark.parametrize("make", [decoder_model, t5_model], ids=["decoder", "t5"])
@pytest.mark.parametrize("scan", [True, False])
def test_cached_greedy_equals_full_recompute(make, scan):
    module, params = make(scan=scan)
    cached = run(module, params, max_new_tokens=12)["tokens"][:, 0]
    kwargs = ({"encoder_inputs": PROMPTS} if module.architecture == "encoder_decoder"
              else {"prompts": PROMPTS})
    reference = decoding.decode_uncached(module, params, max_new_tokens=12, **kwargs)
    np.testing.assert_array_equal(cached, reference)


@pytest.mark.parametrize("make", [decoder_model, t5_model], ids=["decoder", "t5"])
def test_beam_one_equals_greedy(make):
    module, params = make()
    greedy = run(module, params, max_new_tokens=10)
    beam = run(module, params, max_new_tokens=10,
               strategy=decoding.Strategy(beam_size=1, length_penalty_alpha=0.0))
    np.testing.assert_array_equal(beam["tokens"], greedy["tokens"])
    np.testing.assert_allclose(beam["scores"], greedy["scores"], rtol=1e-5)


_APPLY = {}


def _next_token_log_probs(module, params, prompt, generated, buffer_length=16):
    """Next-token log-probabilities after [start] + prompt + generated, the row training
    reads (a fixed-size causal buffer, so the model compiles once)."""
    apply = _APPLY.setdefault(id(module), jax.jit(module.apply))
    sequence = [model_format.of(module).start_id] + list(prompt) + list(generated)
    buffer = np.zeros((1, buffer_length), np.int32)
    buffer[0, : len(sequence)] = sequence
    logits = apply({"params": params}, jnp.asarray(buffer))
    return np.asarray(jax.nn.log_softmax(logits[0, len(sequence) - 1]))


def test_top_k_never_leaves_the_k_best_tokens():
    module, params = decoder_model()
    out = run(module, params, max_new_tokens=6, seeds=[1, 2, 3],
              strategy=decoding.Strategy(temperature=2.0, top_k=3, num_samples=4))
    for prompt, samples in zip(PROMPTS, out["tokens"]):
        for sample in samples:
            for step, token in enumerate(sample):
                log_probs = _next_token_log_probs(module, params, prompt, sample[:step])
                assert token in np.argsort(-log_probs)[:3]
                if token == 1:
                    break


def test_top_p_stays_inside_the_nucleus():
    module, params = decoder_model()
    top_p = 0.3
    out = run(module, params, max_new_tokens=5, seeds=7,
              strategy=decoding.Strategy(temperature=1.0, top_p=top_p, num_samples=4))
    for prompt, samples in zip(PROMPTS, out["tokens"]):
        for sample in samples:
            for step, token in enumerate(sample):
                probs = np.exp(_next_token_log_probs(module, params, prompt, sample[:step]))
                order = np.argsort(-probs)
                before = np.cumsum(probs[order]) - probs[order]
                nucleus = order[before < top_p]
                assert token in nucleus
                if token == 1:
                    break


def test_sampling_is_reproducible_per_request_seed():
    module, params = decoder_model()
    strategy = decoding.Strategy(temperature=1.0, num_samples=3)
    a = run(module, params, max_new_tokens=8, seeds=[11, 12, 13], strategy=strategy)["tokens"]
    b = run(module, params, max_new_tokens=8, seeds=[11, 12, 13], strategy=strategy)["tokens"]
    c = run(module, params, max_new_tokens=8, seeds=[21, 22, 23], strategy=strategy)["tokens"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[:, 0], a[:, 1])  # samples of one prompt differ


def test_beam_search_finds_the_best_sequence_by_enumeration():
    """Vocabulary of 4 (pad, EOS, 2, 3), 3 new tokens: every hypothesis can be scored."""
    module, params = decoder_model(vocab=4)
    prompt, alpha, steps = [2, 3, 2], 0.6, 3
    best_score, best = -np.inf, None
    for length in range(1, steps + 1):
        for body in itertools.product(range(4), repeat=length):
            ended = body[-1] == 1
            if 1 in body[:-1] or (not ended and length < steps):
                continue
            score = sum(_next_token_log_probs(module, params, prompt, body[:i])[t]
                        for i, t in enumerate(body))
            penalised = score / decoding.length_penalty(length, alpha)
            if penalised > best_score:
                best_score, best = penalised, list(body)
    out = decoding.decode(module, params, [prompt], max_new_tokens=steps,
                          strategy=decoding.Strategy(beam_size=16, length_penalty_alpha=alpha))
    assert out["scores"][0, 0] == pytest.approx(best_score, rel=1e-5)
    assert list(out["tokens"][0, 0][: len(best)]) == best


@pytest.mark.parametrize("make", [decoder_model, t5_model], ids=["decoder", "t5"])
def test_decoding_sharded_on_a_mesh_matches(make):
    module, params = make()
    expected = run(module, params, max_new_tokens=8)
    mesh = partitioning.make_mesh((2, 2, 2))
    boxed = jax.eval_shape(lambda: module.init(
        jax.random.key(0), *([jnp.ones((1, 8), jnp.int32)] * (
            2 if module.architecture == "encoder_decoder" else 1)))["params"])
    shardings = partitioning.param_shardings(boxed, mesh, partitioning.DEFAULT_RULES)
    sharded = jax.device_put(params, shardings)
    got = run(module, sharded, max_new_tokens=8, mesh=mesh,
              logical_axis_rules=partitioning.DEFAULT_RULES)
    np.testing.assert_array_equal(got["tokens"], expected["tokens"])


def test_nearby_prompt_lengths_share_one_compiled_program():
    module, params = decoder_model()
    prepared = decoding.prepare_params(module, params)
    decoding.decode(module, prepared, [[5, 6, 7]], max_new_tokens=4)
    before = incremental.for_model.cache_info()
    short = decoding.decode(module, prepared, [[5, 6, 7]], max_new_tokens=4)
    longer = decoding.decode(module, prepared, [[5, 6, 7, 8, 9, 10, 11]], max_new_tokens=4)
    after = incremental.for_model.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 2
    # The padding is invisible: the same prompt alone decodes the same with or without it.
    alone = decoding.decode_uncached(module, params, [[5, 6, 7]], max_new_tokens=4)
    np.testing.assert_array_equal(short["tokens"][:, 0], alone)
    assert longer["tokens"].shape == (1, 1, 4)


def test_cache_grows_in_length_buckets():
    assert decoding.cache_lengths(128, 256) == [160, 192, 224, 256]
    assert decoding.cache_lengths(32, 44) == [44]  # short decodes: one loop, as before
    assert decoding.cache_lengths(32, 96) == [64, 96]


@pytest.mark.parametrize("make", [decoder_model, t5_model], ids=["decoder", "t5"])
def test_decoding_through_growing_caches_equals_full_recompute(make):
    """70 new tokens after a 32-slot prompt: three loops over caches of 64, 96 and 102 slots."""
    module, params = make()
    assert len(decoding.cache_lengths(32, 32 + 70)) == 3
    cached = run(module, params, max_new_tokens=70)["tokens"][:, 0]
    kwargs = ({"encoder_inputs": PROMPTS} if module.architecture == "encoder_decoder"
              else {"prompts": PROMPTS})
    reference = decoding.decode_uncached(module, params, max_new_tokens=70, **kwargs)
    np.testing.assert_array_equal(cached, reference)
    eos = model_format.of(module).eos_id
    longest = max(int(np.argmax(row == eos)) if (row == eos).any() else 70 for row in cached)
    assert longest > 64  # some row reached the last cache before its EOS

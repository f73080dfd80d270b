"""Int8 weight quantization for decoding: the rounding, the product, and decoding with it."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from t5x_lite import decoding
from t5x_lite.models import decoder, incremental, quantization
from test_decoding import t5_model


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), inputs=st.integers(1, 40), seed=st.integers(0, 2**16),
       zero_row=st.booleans())
def test_each_row_is_rounded_to_its_own_grid(rows, inputs, seed, zero_row):
    weight = np.random.default_rng(seed).normal(size=(rows, inputs)).astype(np.float32)
    if zero_row:
        weight[0] = 0.0
    values, scale = quantization.quantize_rows(jnp.asarray(weight), 1)
    assert values.dtype == jnp.int8 and scale.shape == (rows,)
    values, scale = np.asarray(values), np.asarray(scale)
    assert np.abs(values).max() <= 127
    restored = np.asarray(quantization.dequantize_rows(jnp.asarray(values), jnp.asarray(scale)))
    # Round to nearest on a grid of max|row| / 127: off by at most half a step per weight.
    assert np.all(np.abs(restored - weight) <= scale[:, None] / 2 + 1e-7)
    nonzero = np.abs(weight).max(axis=1) > 0
    np.testing.assert_array_equal(np.abs(values).max(axis=1)[nonzero], 127)
    if zero_row:
        assert not values[0].any()


def test_int8_product_matches_the_float_product_of_multi_axis_kernels():
    """An attention output projection: x [batch, length, heads, head_dim], kernel
    [embed, heads, head_dim] (features-first), contracted over two axes."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 4, 8)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(16, 4, 8)), jnp.float32)
    values, scale = quantization.quantize_rows(kernel, 1)
    got = quantization.int8_product(x, values, scale, (2, 3))
    want = jnp.einsum("blhd,ehd->ble", x, kernel)
    assert got.shape == want.shape == (3, 5, 16)
    # Two roundings of at most half a step each, over 32 terms: about 1% of the output's size.
    error = np.abs(np.asarray(got - want)).max() / np.abs(np.asarray(want)).max()
    assert error < 0.02, error
    # and the product is not trivially the float one: the int8 grid is visible
    assert np.abs(np.asarray(got - want)).max() > 0


def _memorising_decoder(rows):
    """A tiny decoder trained until greedy decoding reproduces `rows` from their first tokens."""
    config = decoder.DecoderConfig(vocab_size=64, embed_dim=64, num_layers=2, num_heads=4,
                                   head_dim=16, mlp_dim=128, scan_layers=True)
    module = decoder.DecoderLM(config)
    tokens = jnp.asarray(rows, jnp.int32)
    params = nn.unbox(module.init(jax.random.key(0), tokens)["params"])
    optimizer = optax.adam(1e-2)

    def loss_fn(p):
        logits = module.apply({"params": p}, tokens[:, :-1])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
        return losses[:, 1:].mean()  # the first token after the start id is anyone's guess

    @jax.jit
    def step(p, state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    state = optimizer.init(params)
    for _ in range(150):
        params, state, loss = step(params, state)
    assert float(loss) < 0.05, float(loss)
    return module, params


def test_int8_decoding_reproduces_what_a_trained_model_learned():
    rng = np.random.default_rng(1)
    rows = [[0] + rng.integers(2, 64, 15).tolist() for _ in range(4)]  # 0 = the start id
    module, params = _memorising_decoder(rows)
    prompts = [row[1:5] for row in rows]
    expected = np.asarray([row[5:] for row in rows])
    as_float = decoding.decode(module, params, prompts, max_new_tokens=11, stop_at_eos=False)
    np.testing.assert_array_equal(as_float["tokens"][:, 0], expected)
    quantized = decoding.prepare_params(module, params, "int8")
    leaves = jax.tree.leaves(quantized.params)
    assert sum(x.nbytes for x in leaves if x.dtype == jnp.int8) > 0.7 * sum(
        x.nbytes for x in leaves)
    as_int8 = decoding.decode(module, quantized, prompts, max_new_tokens=11, stop_at_eos=False)
    np.testing.assert_array_equal(as_int8["tokens"][:, 0], expected)


def test_int8_encoder_decoder_logits_stay_close_to_float():
    module, params = t5_model()
    encoder_inputs = jnp.asarray(np.random.default_rng(2).integers(2, 64, (3, 7)), jnp.int32)
    logits = {}
    for quantize in (None, "int8"):
        model = incremental.for_model(type(module), module.config, 4)
        weights = decoding.prepare_params(module, params, quantize).params
        logits[quantize], _, _ = model.prefill(
            weights, model.init_cache(3, 7), jnp.zeros((3, 1), jnp.int32),
            jnp.ones((3,), jnp.int32), encoder_inputs, jnp.full((3,), 7))
    spread = float(jnp.std(logits[None]))
    error = float(jnp.abs(logits["int8"] - logits[None]).max())
    assert 0 < error < 0.1 * spread, (error, spread)


def test_prepared_params_remember_their_quantization():
    module, params = _memorising_decoder([[0] + list(range(2, 17))])
    with pytest.raises(ValueError, match="quantize='int8'"):
        decoding.decode(module, decoding.prepare_params(module, params), [[2, 3]],
                        quantize="int8")
    with pytest.raises(ValueError, match="quantize must be one of"):
        decoding.prepare_params(module, params, "int4")

"""Decoding's model runner: features-first kernels, parameter preparation, prefill and step
logits against the plain full forward pass (teacher forcing, both architectures)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from t5x_lite.models import decoder, incremental, layers
from t5x_lite.models import encoder_decoder as ed


@pytest.mark.parametrize("rows", [3, layers.FEW_ROWS + 5], ids=["few rows", "many rows"])
@pytest.mark.parametrize("features, axis, kernel_axes", [
    ((4, 8), -1, ("embed", "heads", "kv")),  # a query projection: [embed] -> [heads, kv]
    (32, (-2, -1), ("heads", "kv", "embed")),  # an output projection: [heads, kv] -> [embed]
    (32, -1, ("embed", "mlp")),  # square
])
def test_features_first_kernel_computes_the_same_product(rows, features, axis, kernel_axes):
    x_shape = (rows, 1, 4, 8) if axis == (-2, -1) else (rows, 1, 32)
    x = jax.random.normal(jax.random.key(0), x_shape)
    plain = layers.DenseGeneral(features, kernel_axes, axis=axis, use_bias=True)
    variables = nn.unbox(plain.init(jax.random.key(1), x))
    variables["params"]["bias"] = jax.random.normal(jax.random.key(2),
                                                    variables["params"]["bias"].shape)
    kernel = variables["params"]["kernel"]
    num_in = 2 if axis == (-2, -1) else 1
    moved = jnp.moveaxis(kernel, tuple(range(num_in)), tuple(range(-num_in, 0)))
    first = layers.DenseGeneral(features, kernel_axes, axis=axis, use_bias=True,
                                features_first=True)
    # Same initial weights, stored transposed (the initialiser sees the same fan-in).
    np.testing.assert_array_equal(
        nn.unbox(first.init(jax.random.key(1), x))["params"]["kernel"], moved)
    got = first.apply({"params": {"kernel": moved, "bias": variables["params"]["bias"]}}, x)
    np.testing.assert_allclose(got, plain.apply(variables, x), rtol=1e-5, atol=1e-5)


def _decoder(**overrides):
    config = decoder.DecoderConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4,
                                   num_kv_heads=2, head_dim=8, mlp_dim=32, **overrides)
    module = decoder.DecoderLM(config)
    return module, nn.unbox(module.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"])


def _t5(**overrides):
    config = ed.EncoderDecoderConfig(vocab_size=64, embed_dim=32, num_encoder_layers=2,
                                     num_decoder_layers=2, num_heads=4, head_dim=8, mlp_dim=64,
                                     **overrides)
    module = ed.EncoderDecoder(config)
    return module, nn.unbox(module.init(jax.random.key(1), jnp.ones((1, 8), jnp.int32),
                                       jnp.ones((1, 4), jnp.int32))["params"])


def test_prepare_unrolls_and_transposes_exactly_the_dense_kernels():
    module, params = _decoder()  # scanned, GQA, untied: square [32, 32] kernels included
    prepared = traverse_util.flatten_dict(incremental.prepare(module, params).params)
    layer0 = {k[1:]: v[0] for k, v in traverse_util.flatten_dict(params).items()
              if k[0] == "layers"}
    assert ("layers_1", "mlp", "wo", "kernel") in prepared and ("layers",) not in {
        k[:1] for k in prepared}
    for path, value in layer0.items():
        got = prepared[("layers_0",) + path]
        if path[-1] != "kernel":
            np.testing.assert_array_equal(got, value)
        elif path[-2] == "out":  # [heads, kv, embed] -> [embed, heads, kv]
            np.testing.assert_array_equal(got, jnp.transpose(value, (2, 0, 1)))
        else:  # [embed, ...] -> [..., embed]
            np.testing.assert_array_equal(got, jnp.moveaxis(value, 0, -1))
    np.testing.assert_array_equal(prepared[("lm_head", "kernel")], params["lm_head"]["kernel"].T)
    np.testing.assert_array_equal(prepared[("token_embed", "embedding")],
                                  params["token_embed"]["embedding"])


PROMPTS = np.asarray([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14], [3, 0, 0, 0, 0, 0]], np.int32)
LENGTHS = np.asarray([4, 6, 1], np.int32)
FORCED = np.asarray([[20, 21, 22], [30, 31, 32], [40, 41, 42]], np.int32)


@pytest.mark.parametrize("make", [
    _decoder, lambda: _decoder(tie_embeddings=True, scan_layers=False), _t5,
    lambda: _t5(tie_embeddings=True, mlp_activations=("relu",))], ids=[
    "llama", "tied unscanned", "t5 v1.1", "t5 v1.0"])
def test_prefill_and_steps_give_the_full_forward_logits(make):
    """Prompts of different lengths, then three forced tokens: every next-token distribution
    equals the one a plain forward pass over the whole sequence computes."""
    module, params = make()
    batch = len(PROMPTS)
    runner = incremental.for_model(type(module), module.config, PROMPTS.shape[1] + 3)
    prepared = incremental.prepare(module, params).params
    if runner.encoder_decoder:
        encoder_inputs = PROMPTS
        prompt, lengths = np.zeros((batch, 1), np.int32), np.ones(batch, np.int32)
        sequences = np.concatenate([prompt, FORCED], axis=1)
        encoder_lengths = LENGTHS  # segments from lengths, not ids: 0 may be a real token
        full = module.apply({"params": params}, encoder_inputs, sequences,
                            encoder_segment_ids=(np.arange(PROMPTS.shape[1])[None]
                                                 < LENGTHS[:, None]).astype(np.int32))
    else:
        encoder_inputs, encoder_lengths, prompt, lengths = None, None, PROMPTS, LENGTHS
        sequences = np.zeros((batch, PROMPTS.shape[1] + 3), np.int32)
        for row, (p, n) in enumerate(zip(PROMPTS, LENGTHS)):
            sequences[row, : n + 3] = np.concatenate([p[:n], FORCED[row]])
        full = module.apply({"params": params}, sequences)
    cache = runner.init_cache(batch, None if encoder_inputs is None else PROMPTS.shape[1])
    logits, cache, extra = runner.prefill(prepared, cache, jnp.asarray(prompt),
                                          jnp.asarray(lengths), encoder_inputs,
                                          None if encoder_lengths is None
                                          else jnp.asarray(encoder_lengths))
    rows = np.arange(batch)
    np.testing.assert_allclose(logits, full[rows, lengths - 1], rtol=1e-4, atol=1e-4)
    for step in range(3):
        logits, cache = runner.step(prepared, cache, jnp.asarray(FORCED[:, step]),
                                    jnp.asarray(lengths + step), extra)
        np.testing.assert_allclose(logits, full[rows, lengths + step], rtol=1e-4, atol=1e-4)

"""Decoder-only LM: packing isolation, grouped-query attention, scan/remat equivalence."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from packing import pack
from t5x_lite.models import decoder, layers, position_encodings

TINY = dict(vocab_size=97, embed_dim=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64)


def _init(config, length=24):
    model = decoder.DecoderLM(config)
    params = model.init(jax.random.key(0), jnp.ones((1, length), jnp.int32))["params"]
    return model, nn.unbox(params)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # LLaMA: RoPE, RMSNorm, SwiGLU
        {"num_kv_heads": 2},  # grouped-query attention
        {"position_embedding": "learned", "norm_type": "layernorm", "use_bias": True,
         "mlp_activations": ("gelu",), "tie_embeddings": True},  # GPT-2 style
    ],
)
def test_packed_row_matches_each_example_alone(overrides):
    config = decoder.DecoderConfig(**TINY, **overrides)
    model, params = _init(config)
    rng = np.random.default_rng(0)
    examples = [rng.integers(3, 97, size=n) for n in (7, 5, 9)]
    tokens, segments, positions = pack(examples, 24)
    packed = model.apply(
        {"params": params}, tokens, decoder_segment_ids=segments, decoder_positions=positions,
    )[0]
    offset = 0
    for example in examples:
        alone = model.apply({"params": params}, example[None].astype(np.int32))[0]
        np.testing.assert_allclose(packed[offset : offset + len(example)], alone, atol=2e-5)
        offset += len(example)


def test_logits_are_causal():
    model, params = _init(decoder.DecoderConfig(**TINY))
    tokens = np.random.default_rng(1).integers(3, 97, size=(1, 16)).astype(np.int32)
    changed = tokens.copy()
    changed[0, 10:] = 5
    a = model.apply({"params": params}, tokens)
    b = model.apply({"params": params}, changed)
    np.testing.assert_allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not np.allclose(a[0, 10:], b[0, 10:])


def test_prefix_positions_attend_bidirectionally():
    model, params = _init(decoder.DecoderConfig(**TINY))
    tokens = np.random.default_rng(2).integers(3, 97, size=(1, 12)).astype(np.int32)
    prefix = np.zeros((1, 12), bool)
    prefix[0, :6] = True
    changed = tokens.copy()
    changed[0, 5] = 7  # last prefix token: earlier prefix positions now see the change
    a = model.apply({"params": params}, tokens, decoder_causal_attention=prefix)
    b = model.apply({"params": params}, changed, decoder_causal_attention=prefix)
    assert not np.allclose(a[0, :5], b[0, :5])
    causal_a = model.apply({"params": params}, tokens)
    causal_b = model.apply({"params": params}, changed)
    np.testing.assert_allclose(causal_a[0, :5], causal_b[0, :5], atol=1e-6)


def test_grouped_query_attention_shapes_and_equivalence():
    """GQA with kv heads repeated by hand equals multi-head attention with those weights."""
    attention = layers.Attention(num_heads=4, num_kv_heads=2, head_dim=8)
    x = jax.random.normal(jax.random.key(3), (2, 6, 32))
    positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
    rope = position_encodings.rope_tables(positions, 8, 10_000.0)
    params = nn.unbox(attention.init(jax.random.key(4), x, x, rope=rope)["params"])
    assert params["key"]["kernel"].shape == (32, 2, 8)
    full = layers.Attention(num_heads=4, num_kv_heads=4, head_dim=8)
    repeated = dict(params)
    for name in ("key", "value"):
        repeated[name] = {"kernel": jnp.repeat(params[name]["kernel"], 2, axis=1)}
    kwargs = dict(rope=rope)
    np.testing.assert_allclose(
        attention.apply({"params": params}, x, x, **kwargs),
        full.apply({"params": repeated}, x, x, **kwargs),
        atol=1e-5,
    )


@pytest.mark.parametrize("remat_policy", ["none", "full", "dots"])
def test_scan_and_remat_do_not_change_the_function(remat_policy):
    tokens = np.random.default_rng(5).integers(3, 97, size=(2, 16)).astype(np.int32)
    reference_model, unrolled = _init(decoder.DecoderConfig(**TINY, scan_layers=False))
    scanned_model = decoder.DecoderLM(
        decoder.DecoderConfig(**TINY, scan_layers=True, remat_policy=remat_policy)
    )
    # The scanned stack holds the same layers stacked on a leading axis.
    stacked = {k: v for k, v in unrolled.items() if not k.startswith("layers_")}
    layer_trees = [unrolled[f"layers_{i}"] for i in range(TINY["num_layers"])]
    stacked["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layer_trees)
    expected = reference_model.apply({"params": unrolled}, tokens)
    got = scanned_model.apply({"params": stacked}, tokens)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    grads = jax.grad(lambda p: scanned_model.apply({"params": p}, tokens).sum())(stacked)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))

"""Attention's kernel per backend (layers.dot_product_attention): cuDNN's fused kernel for
16-bit attention on a GPU, XLA elsewhere; the XLA path keeps segment ids, the causal mask and
T5's bias (checked against a softmax written here), and a kernel refusal falls back to it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.models import layers


def test_implementation_per_backend():
    assert layers.attention_implementation("gpu", jnp.bfloat16) == "cudnn"
    assert layers.attention_implementation("cuda", jnp.float16) == "cudnn"
    assert layers.attention_implementation("gpu", jnp.float32) == "xla"  # cuDNN: 16-bit only
    assert layers.attention_implementation("cpu", jnp.bfloat16) == "xla"
    assert layers.attention_implementation("tpu", jnp.bfloat16) == "xla"


def _inputs(seed=0, batch=2, length=12, heads=4, head_dim=8):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(batch, length, heads, head_dim)).astype(np.float32)
               for _ in range(3))
    segments = np.array([[1] * 5 + [2] * 5 + [0] * 2, [1] * 12])
    mask = layers.attention_mask(segments, segments, causal=True, query_length=length,
                                 key_length=length)
    bias = rng.normal(size=(1, heads, length, length)).astype(np.float32)
    return q, k, v, mask, bias


def _reference(q, k, v, mask, bias, scale):
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale + bias
    logits = np.where(np.asarray(mask), logits, -1e30)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def test_xla_path_keeps_segments_causality_and_bias():
    q, k, v, mask, bias = _inputs()
    out = layers.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=0.5)
    np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, mask, bias, 0.5),
                               atol=1e-5)


def test_a_kernel_refusal_falls_back_to_xla(monkeypatch):
    """Asked for cuDNN where it cannot run (this CPU), the call still returns XLA's result."""
    q, k, v, mask, bias = _inputs(seed=1)
    q, k, v, bias = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v, bias))
    expected = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=0.3,
                                            implementation="xla")
    monkeypatch.setattr(layers, "attention_implementation", lambda backend, dtype: "cudnn")
    with pytest.raises((ValueError, NotImplementedError, TypeError, RuntimeError)):
        jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=0.3,
                                     implementation="cudnn")
    out = layers.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=0.3)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))

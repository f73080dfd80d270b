"""Key/value caches for autoregressive decoding, laid out for one-token steps.

A cache holds [batch, kv_heads, max_length, head_dim]: each head's keys (and values) are one
contiguous [max_length, head_dim] block, so a decode step's two attention products (query ·
keysᵀ, probabilities · values) are batched matrix-vector products that read the cache as it
lies. The training layout [batch, length, heads, head_dim] would make XLA transpose the whole
cache of every layer at every step (measured: a quarter of a decode step's time on CPU).

Each example writes at its own position, so a batch may hold right-padded prompts of different
lengths; a query sees the slots at or before its own position, which every earlier step has
written (slots a padded prompt filled with padding are overwritten before anyone reads them).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cache_shape(batch: int, length: int, kv_heads: int, head_dim: int) -> tuple[int, ...]:
    return (batch, kv_heads, length, head_dim)


def to_cache_layout(x: jax.Array) -> jax.Array:
    """[batch, length, kv_heads, head_dim] -> [batch, kv_heads, length, head_dim]."""
    return jnp.swapaxes(x, 1, 2)


def write(cache: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Writes `new` ([batch, length, kv_heads, head_dim]) into `cache` from slot start[b] on."""
    new = to_cache_layout(new).astype(cache.dtype)
    return jax.vmap(lambda c, n, s: jax.lax.dynamic_update_slice(c, n, (0, s, 0)))(
        cache, new, start)


def step_mask(query_positions: jax.Array, cache_length: int) -> jax.Array:
    """[batch, 1, q, cache]: a query sees the cache slots at or before its own position."""
    slots = jnp.arange(cache_length)
    return (slots[None, None, :] <= query_positions[:, :, None])[:, None]


def attend(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None,
           bias: jax.Array | None, scale: float) -> jax.Array:
    """Attention of query [batch, q, heads, head_dim] over a cache-layout key/value.

    Grouped-query heads share their key/value head (query head h uses kv head h // group).
    `mask` is [batch|1, 1, q, keys] (True = may attend), `bias` [batch|1, heads, q, keys].
    Softmax in float32, as jax.nn.dot_product_attention does.
    """
    batch, q_len, heads, head_dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    query = query.reshape(batch, q_len, kv_heads, group, head_dim) * jnp.asarray(
        scale, query.dtype)
    logits = jnp.einsum("btkgd,bksd->bkgts", query, key,
                        preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.reshape(bias.shape[0], kv_heads, group, *bias.shape[2:])
    if mask is not None:
        logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, value)
    return out.reshape(batch, q_len, heads, head_dim)

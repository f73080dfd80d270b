"""Position information: rotary embeddings (decoder-only models) and T5's relative
position bias (encoder-decoder), shared by every layer of a stack.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotary angles (Su et al. 2021), [batch, length, 1, head_dim].

    positions: [batch, length] (restart at 0 per packed segment, so packed examples see the
    same rotations as when alone). Computed once per forward pass and shared by every layer's
    queries and keys: XLA:CPU's sin/cos are slow (2 ms for one [8, 128, 8, 64] tensor on two
    cores), and fused into each rotation they were recomputed per layer and head.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, d/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    return (jnp.concatenate([cos, cos], axis=-1)[:, :, None, :],
            jnp.concatenate([sin, sin], axis=-1)[:, :, None, :])


def apply_rope(x: jax.Array, tables: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotary position embedding in the "rotate half" layout of LLaMA.

    x: [batch, length, heads, head_dim]; tables: `rope_tables` for the same positions.
    """
    cos, sin = tables
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x * cos + rotated * sin).astype(x.dtype)


def relative_position_bucket(
    relative_position: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5's bucketing of key-minus-query distances (Raffel et al. 2020, section 2.1).

    Half the buckets (per direction when bidirectional) hold exact small distances; the rest
    grow logarithmically up to `max_distance`, beyond which everything shares the last bucket.
    A causal stack only sees non-positive distances, so it uses all buckets for the past.
    """
    bucket = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    scaled = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / np.log(
        max_distance / max_exact
    )
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(relative_position.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """Learned per-head scalar bias for each relative-position bucket (one table per stack,
    shared by all its layers). Returns [batch, heads, q, k] for the given positions."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    embedding_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(self.embedding_init, ("heads", "relpos_buckets")),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )
        relative = key_positions[:, None, :] - query_positions[:, :, None]  # [b, q, k]
        buckets = relative_position_bucket(
            relative.astype(jnp.int32), bidirectional=self.bidirectional,
            num_buckets=self.num_buckets, max_distance=self.max_distance,
        )
        bias = jnp.take(jnp.asarray(table, self.dtype), buckets, axis=1)  # [h, b, q, k]
        return jnp.transpose(bias, (1, 0, 2, 3))

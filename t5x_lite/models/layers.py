"""Transformer building blocks shared by every architecture in t5x_lite.

One attention, one MLP, one norm and one embedding implementation serve the decoder-only and
the encoder-decoder models, so an ablation changes a flag, not a code path.

Sharding: every parameter is created with *logical* axis names and every large activation is
constrained on logical axes. Which mesh axis shards which logical axis is a rule table supplied
by gin (see gin_configs/mesh/); this file never names a mesh axis.

Logical axes used here:
  params:       vocab, embed, mlp, heads, kv_heads, kv (the per-head dimension)
  activations:  batch, length, embed, heads, kv, mlp, vocab
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.models import kv_cache, quantization
from t5x_lite.models.position_encodings import apply_rope

Initializer = Callable[..., jax.Array]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=True),  # T5 v1.1's "gelu_new" (tanh form)
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),
    "silu": nn.silu,
}

# Fan-in scaled truncated normal: what T5X uses for its dense kernels.
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on logical axes (a no-op outside a mesh / rules context)."""
    return nn.with_logical_constraint(x, tuple(logical_axes))


# A decode step multiplies a handful of rows (batch x 1 token) by every weight. XLA:CPU's
# dot streams such a product about twice as fast from a weight stored features-first
# ([features, inputs]: each output's weights contiguous), computed as weight · xᵀ, as from
# the usual [inputs, features] (measured: 10-13 vs 5-7 GB/s of weights on 2 cores, see
# experiments/benchmarks/README.md). Decoding therefore keeps its kernels features-first.
FEW_ROWS = 64


def features_first_product(x: jax.Array, kernel: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """x contracted over `axes` with kernel [features..., inputs...] -> [other axes, features]."""
    num_in = len(axes)
    num_features = kernel.ndim - num_in
    kernel_in = tuple(range(num_features, kernel.ndim))
    rows = int(np.prod([d for a, d in enumerate(x.shape) if a not in axes]))
    if rows > FEW_ROWS:  # an ordinary matrix product (a prompt, a training batch)
        return jax.lax.dot_general(x, kernel, ((axes, kernel_in), ((), ())))
    out = jax.lax.dot_general(kernel, x, ((kernel_in, axes), ((), ())))  # [features, rows]
    # Without the barrier XLA folds the transpose back into the dot, undoing the layout.
    out = jax.lax.optimization_barrier(out)
    rest = x.ndim - num_in
    return jnp.transpose(out, tuple(range(num_features, num_features + rest))
                         + tuple(range(num_features)))


class DenseGeneral(nn.Module):
    """Dense layer contracting `axis` of the input into `features`, with logical axis names.

    The kernel is [inputs..., features...], or [features..., inputs...] when `features_first`
    (the layout decoding uses, see `features_first_product`). It is initialised as the
    equivalent 2-D matrix [prod(inputs), prod(features)] and reshaped, so fan-in based
    initialisers see the true fan-in.
    """

    features: int | tuple[int, ...]
    kernel_axes: tuple[str, ...]
    axis: int | tuple[int, ...] = -1
    use_bias: bool = False
    kernel_init: Initializer = default_kernel_init
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    features_first: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        axes = tuple(a % x.ndim for a in axes)
        in_shape = tuple(x.shape[a] for a in axes)
        num_in = len(axes)
        shape, kernel_axes = in_shape + features, tuple(self.kernel_axes)
        if self.features_first:
            shape, kernel_axes = features + in_shape, kernel_axes[num_in:] + kernel_axes[:num_in]

        def init(key, shape, dtype):
            flat = (int(np.prod(in_shape)), int(np.prod(features)))
            kernel = self.kernel_init(key, flat, dtype).reshape(in_shape + features)
            if self.features_first:
                kernel = jnp.moveaxis(kernel, tuple(range(num_in)), tuple(range(-num_in, 0)))
            return kernel

        kernel = self.param(
            "kernel", nn.with_logical_partitioning(init, kernel_axes), shape, self.param_dtype
        )
        scale = quantization.scale_of(self, "kernel") if self.features_first else None
        if scale is not None:
            out = quantization.int8_product(x, kernel, scale, axes).astype(self.dtype)
        elif self.features_first:
            out = features_first_product(x.astype(self.dtype), jnp.asarray(kernel, self.dtype),
                                         axes)
        else:
            out = jax.lax.dot_general(x.astype(self.dtype), jnp.asarray(kernel, self.dtype),
                                      ((axes, tuple(range(num_in))), ((), ())))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             tuple(self.kernel_axes[num_in:])),
                features,
                self.param_dtype,
            )
            out = out + jnp.asarray(bias, self.dtype)
        return out


def dense(
    features: int | tuple[int, ...],
    kernel_axes: tuple[str, ...],
    *,
    axis: int | tuple[int, ...] = -1,
    use_bias: bool = False,
    kernel_init: Initializer = default_kernel_init,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    features_first: bool = False,
    name: str | None = None,
) -> DenseGeneral:
    return DenseGeneral(
        features=features, kernel_axes=kernel_axes, axis=axis, use_bias=use_bias,
        kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype,
        features_first=features_first, name=name,
    )


def norm(
    kind: str, epsilon: float, dtype=jnp.float32, param_dtype=jnp.float32, name: str | None = None
) -> nn.Module:
    """RMSNorm (T5, LLaMA) or LayerNorm (GPT-2); statistics are computed in float32."""
    scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",))
    if kind == "rmsnorm":
        return nn.RMSNorm(
            epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, name=name
        )
    if kind == "layernorm":
        return nn.LayerNorm(
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            scale_init=scale_init,
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            name=name,
        )
    raise ValueError(f"norm_type must be 'rmsnorm' or 'layernorm', got {kind!r}")


def attention_mask(
    query_segment_ids: jax.Array | None,
    key_segment_ids: jax.Array | None,
    *,
    causal: bool,
    query_length: int,
    key_length: int,
    bidirectional_prefix: jax.Array | None = None,
) -> jax.Array | None:
    """Boolean mask [batch, 1, q, k]: True where a query may attend to a key.

    Packed examples never see each other (segment ids must match, padding has segment 0 and
    sees only padding). `bidirectional_prefix` ([batch, k] bool) lets positions inside the
    prefix of a prefix-LM attend to each other in both directions.
    """
    mask = None
    if query_segment_ids is not None and key_segment_ids is not None:
        mask = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    if causal:
        causal_mask = jnp.arange(query_length)[:, None] >= jnp.arange(key_length)[None, :]
        causal_mask = causal_mask[None]
        if bidirectional_prefix is not None:
            both_in_prefix = bidirectional_prefix[:, :, None] & bidirectional_prefix[:, None, :]
            causal_mask = causal_mask | both_in_prefix
        mask = causal_mask if mask is None else mask & causal_mask
    return None if mask is None else mask[:, None, :, :]


# jax.nn.dot_product_attention's implementation per backend: cuDNN's fused (flash-attention)
# kernel on a GPU, which takes 16-bit inputs only; XLA's elsewhere (CPU, TPU) and for float32.
FUSED_DTYPES = (jnp.bfloat16, jnp.float16)


def attention_implementation(backend: str, dtype) -> str:
    """'cudnn' for 16-bit attention on a GPU, else 'xla'."""
    fused = backend in ("gpu", "cuda") and jnp.dtype(dtype) in FUSED_DTYPES
    return "cudnn" if fused else "xla"


def dot_product_attention(query, key, value, *, bias, mask, scale):
    """`jax.nn.dot_product_attention` with the backend's implementation (segment and causal
    masks and T5's bias are passed the same way to both). A shape, mask or device cuDNN
    refuses while tracing falls back to XLA, so a model never fails for the kernel's sake."""
    implementation = attention_implementation(jax.default_backend(), query.dtype)
    if implementation == "cudnn":
        try:
            return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                                scale=scale, implementation="cudnn")
        except (ValueError, NotImplementedError, TypeError, RuntimeError):
            pass  # XLA's below: same result, unfused
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale,
                                        implementation="xla")


class Attention(nn.Module):
    """Multi-head attention with optional grouped-query heads (num_kv_heads < num_heads).

    T5 does not scale the logits by 1/sqrt(head_dim) (its query initialisation carries the
    factor): set `scale_logits=False` for that. `bias` is an additive [b|1, heads, q, k] term
    (T5's relative position bias); `rope` the `position_encodings.rope_tables` of a
    self-attention's positions.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale_logits: bool = True
    use_bias: bool = False
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init
    query_init: Initializer | None = None
    # Cached decoding (models/kv_cache.py): None (training / scoring), 'prefill' (attend
    # within the prompt and write its keys and values, or a cross-attention's projected
    # encoder outputs, into the 'cache' collection) or 'step' (write one position, attend
    # over the cache; cross-attention reuses what prefill stored). The mask must match:
    # causal within the prompt at prefill, kv_cache.step_mask at a step.
    decode: str | None = None
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        mask: jax.Array | None = None,
        *,
        query_positions: jax.Array | None = None,
        rope: tuple[jax.Array, jax.Array] | None = None,
        bias: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        common = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                      features_first=self.decode is not None)
        query_layer = dense((self.num_heads, self.head_dim), ("embed", "heads", "kv"),
                            kernel_init=self.query_init or self.kernel_init, name="query",
                            **common)
        key_layer = dense((self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "kv"),
                          kernel_init=self.kernel_init, name="key", **common)
        value_layer = dense((self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "kv"),
                            kernel_init=self.kernel_init, name="value", **common)
        out_layer = dense(inputs_q.shape[-1], ("heads", "kv", "embed"), axis=(-2, -1),
                          kernel_init=self.kernel_init, name="out", **common)
        query = query_layer(inputs_q)
        scale = 1.0 / np.sqrt(self.head_dim) if self.scale_logits else 1.0
        if self.decode is not None and self.cross_attention:
            key, value = self._cached_projection(inputs_kv, key_layer, value_layer)
            out = kv_cache.attend(query, key, value, mask, bias, scale)
        else:
            key, value = key_layer(inputs_kv), value_layer(inputs_kv)
            if rope is not None:  # self-attention: queries and keys at the same positions
                query, key = apply_rope(query, rope), apply_rope(key, rope)
            if self.decode is not None:
                cached_key, cached_value = self._update_cache(key, value, query_positions)
            if self.decode == "step":
                out = kv_cache.attend(query, cached_key, cached_value, mask, bias, scale)
            else:  # training, scoring and prefill attend over this call's own keys
                query = constrain(query, ("batch", "length", "heads", "kv"))
                key = constrain(key, ("batch", "length", "heads", "kv"))
                value = constrain(value, ("batch", "length", "heads", "kv"))
                if bias is not None:
                    bias = bias.astype(self.dtype)
                out = dot_product_attention(query, key, value, bias=bias, mask=mask,
                                            scale=scale)
        out = out_layer(constrain(out, ("batch", "length", "heads", "kv")))
        return nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(out, deterministic=deterministic)

    def _update_cache(self, key, value, positions):
        """Writes this call's keys/values at their positions; returns the whole cache.

        The cache is created (zeros, as long as the inputs `init` sees) when the model is
        initialised in decode mode; afterwards each example writes from its own first position.
        """
        batch, length = key.shape[:2]
        shape = kv_cache.cache_shape(batch, length, self.num_kv_heads, self.head_dim)
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, value.dtype)
        if initialized:
            cached_key.value = kv_cache.write(cached_key.value, key, positions[:, 0])
            cached_value.value = kv_cache.write(cached_value.value, value, positions[:, 0])
        return cached_key.value, cached_value.value

    def _cached_projection(self, encoded, key_layer, value_layer):
        """A cross-attention's encoder keys/values, projected once at prefill and reused."""
        shape = kv_cache.cache_shape(encoded.shape[0], encoded.shape[1], self.num_kv_heads,
                                     self.head_dim)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, self.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, self.dtype)
        if self.decode == "prefill" or self.is_initializing():
            cached_key.value = kv_cache.to_cache_layout(key_layer(encoded)).astype(self.dtype)
            cached_value.value = kv_cache.to_cache_layout(value_layer(encoded)).astype(self.dtype)
        return cached_key.value, cached_value.value


class Mlp(nn.Module):
    """Feed-forward block; two activations make it gated (SwiGLU: ('silu', 'linear'))."""

    hidden_dim: int
    activations: tuple[str, ...] = ("silu", "linear")
    use_bias: bool = False
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init
    features_first: bool = False  # kernels in decoding's layout (see DenseGeneral)

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        common = dict(
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            features_first=self.features_first,
        )
        hidden = None
        for index, activation in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{index}"
            branch = ACTIVATIONS[activation](
                dense(self.hidden_dim, ("embed", "mlp"), name=name, **common)(x)
            )
            hidden = branch if hidden is None else hidden * branch
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
            hidden, deterministic=deterministic
        )
        return dense(x.shape[-1], ("mlp", "embed"), name="wo", **common)(hidden)


def token_embedder(
    vocab_size: int,
    embed_dim: int,
    *,
    stddev: float = 1.0,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    name: str = "token_embed",
) -> nn.Embed:
    """Token embedding table [vocab, embed]; `tied_logits` uses it as the output layer."""
    return TokenEmbed(
        num_embeddings=vocab_size,
        features=embed_dim,
        dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(stddev=stddev), ("vocab", "embed")
        ),
        name=name,
    )


class TokenEmbed(nn.Embed):
    """nn.Embed that also reads a table stored as int8 with per-row scales (quantization.py)."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        scale = quantization.scale_of(self, "embedding")
        if scale is None:
            return super().__call__(inputs)
        rows = jnp.take(self.embedding, inputs, axis=0).astype(jnp.float32)
        return (rows * jnp.take(scale, inputs, axis=0)[..., None]).astype(self.dtype)


def tied_logits(embed: TokenEmbed, x: jax.Array) -> jax.Array:
    """Logits with the token embedding as the output layer ([vocab, embed]: features-first)."""
    scale = quantization.scale_of(embed, "embedding")
    if scale is not None:
        return quantization.int8_product(x, embed.embedding, scale, (x.ndim - 1,))
    table = jnp.asarray(embed.embedding, embed.dtype)
    return features_first_product(x.astype(embed.dtype), table, (x.ndim - 1,))


MODEL_OUTPUTS = ("logits", "hidden", "both")


def check_outputs(outputs: str) -> None:
    """What a language model returns: its logits, its final hidden states, or both."""
    if outputs not in MODEL_OUTPUTS:
        raise ValueError(f"outputs must be one of {MODEL_OUTPUTS}, got {outputs!r}")

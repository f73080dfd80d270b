"""Decoder-only Transformer language model (LLaMA-style by default, GPT-2 by configuration).

Defaults follow LLaMA: pre-RMSNorm, rotary positions, SwiGLU MLP, no biases, untied output
layer. GPT-2/3 is the same module with `norm_type='layernorm'`, `position_embedding='learned'`,
`mlp_activations=('gelu',)`, `use_bias=True` and `tie_embeddings=True`.

Inputs are T5X-style packed features: `decoder_input_tokens`, `decoder_segment_ids`
(0 = padding, 1..n = packed examples) and `decoder_positions` (restart at 0 per example).
`decoder_causal_attention` (optional, bool) marks the prefix of a prefix-LM, which attends
bidirectionally to itself.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.models import kv_cache, layers, model_format, position_encodings, stacking


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyperparameters of a decoder-only LM; every field is a gin binding."""

    vocab_size: int = 8320
    embed_dim: int = 512
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int | None = None  # None: plain multi-head attention
    head_dim: int = 64
    mlp_dim: int = 1536
    mlp_activations: tuple[str, ...] = ("silu", "linear")
    norm_type: str = "rmsnorm"
    norm_epsilon: float = 1e-6
    position_embedding: str = "rope"  # 'rope' | 'learned' | 'none'
    rope_theta: float = 10_000.0
    max_length: int = 2048  # size of the learned position table
    tie_embeddings: bool = False
    use_bias: bool = False
    dropout_rate: float = 0.0
    embedding_init_stddev: float = 1.0
    dtype: str = "float32"  # activations
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    format: model_format.ModelFormat = model_format.ModelFormat()  # special ids, prefix attention

    def __post_init__(self):
        self.format.check_ids(self.vocab_size)
        if self.position_embedding not in ("rope", "learned", "none"):
            raise ValueError(
                f"position_embedding must be 'rope', 'learned' or 'none', got "
                f"{self.position_embedding!r}"
            )
        if self.remat_policy not in stacking.REMAT_POLICIES:
            raise ValueError(
                f"remat_policy must be one of {sorted(stacking.REMAT_POLICIES)}, "
                f"got {self.remat_policy!r}"
            )
        for field in ("vocab_size", "embed_dim", "num_layers", "num_heads", "head_dim", "mlp_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)  # raise early on a bad dtype name

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads


class DecoderBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    config: DecoderConfig
    deterministic: bool = True
    decode: str | None = None

    @nn.compact
    def __call__(self, x, mask, positions, rope):
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        x = layers.constrain(x, ("batch", "length", "embed"))
        h = layers.norm(cfg.norm_type, cfg.norm_epsilon, dtype, param_dtype, "pre_attention_norm")(x)
        h = layers.Attention(
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.kv_heads,
            head_dim=cfg.head_dim,
            use_bias=cfg.use_bias,
            dropout_rate=cfg.dropout_rate,
            dtype=dtype,
            param_dtype=param_dtype,
            decode=self.decode,
            name="self_attention",
        )(h, h, mask, query_positions=positions, rope=rope, deterministic=self.deterministic)
        x = x + h
        h = layers.norm(cfg.norm_type, cfg.norm_epsilon, dtype, param_dtype, "pre_mlp_norm")(x)
        h = layers.Mlp(
            hidden_dim=cfg.mlp_dim,
            activations=tuple(cfg.mlp_activations),
            use_bias=cfg.use_bias,
            dropout_rate=cfg.dropout_rate,
            dtype=dtype,
            param_dtype=param_dtype,
            features_first=self.decode is not None,
            name="mlp",
        )(h, deterministic=self.deterministic)
        x = layers.constrain(x + h, ("batch", "length", "embed"))
        return x, None


class DecoderLM(nn.Module):
    """Causal language model returning float32 logits [batch, length, vocab].

    With `decode='prefill'` / `'step'` the attention layers keep a key/value cache of
    `max_decode_length` positions in the 'cache' collection (see decoding.py); positions then
    say where each example's tokens go. `logits_at` ([batch] or [batch, k] indices) computes
    the output layer (and returns hidden states) at those positions only: [batch, 1 or k, ...]. `outputs` picks what is returned:
    'logits', 'hidden' (the final-normed states [batch, length, embed]; the output layer is
    then never built, as a reward model's trunk needs) or 'both' (logits, hidden); `project`
    applies the output layer to such states.
    """

    config: DecoderConfig
    decode: str | None = None
    max_decode_length: int = 0
    architecture = "decoder"  # see model_format.of

    @nn.compact
    def __call__(
        self,
        decoder_input_tokens: jax.Array,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        decoder_causal_attention: jax.Array | None = None,
        *,
        deterministic: bool = True,
        logits_at: jax.Array | None = None,
        outputs: str = "logits",
        final_states: jax.Array | None = None,
        **unused_features: Any,
    ) -> jax.Array:
        cfg = self.config
        layers.check_outputs(outputs)
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        embed = layers.token_embedder(
            cfg.vocab_size, cfg.embed_dim, stddev=cfg.embedding_init_stddev,
            dtype=dtype, param_dtype=param_dtype,
        )
        if final_states is not None:  # `project`: the output layer alone
            return self._logits(embed, final_states)
        batch, length = decoder_input_tokens.shape
        if decoder_positions is None:
            decoder_positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        if self.decode == "step" and not self.is_initializing():
            mask = kv_cache.step_mask(decoder_positions, self.max_decode_length)
        else:
            mask = layers.attention_mask(
                decoder_segment_ids,
                decoder_segment_ids,
                causal=True,
                query_length=length,
                key_length=length,
                bidirectional_prefix=decoder_causal_attention,
            )

        x = embed(decoder_input_tokens)
        if cfg.position_embedding == "learned":
            x = x + layers.token_embedder(
                cfg.max_length, cfg.embed_dim, stddev=0.01, dtype=dtype,
                param_dtype=param_dtype, name="position_embed",
            )(decoder_positions)
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = layers.constrain(x.astype(dtype), ("batch", "length", "embed"))

        rope = None
        if cfg.position_embedding == "rope":
            rope = position_encodings.rope_tables(decoder_positions, cfg.head_dim,
                                                  cfg.rope_theta)
        run_blocks = stacking.stack_blocks(
            DecoderBlock, cfg, cfg.num_layers, cfg.scan_layers, cfg.remat_policy, num_args=3,
            deterministic=deterministic, decode=self.decode,
        )
        x = run_blocks(x, mask, decoder_positions, rope)
        if logits_at is not None:  # prefill: the last prompt token; RL: the response's tokens
            at = logits_at[:, None] if logits_at.ndim == 1 else logits_at
            x = jnp.take_along_axis(x, at[..., None], axis=1)

        x = layers.norm(cfg.norm_type, cfg.norm_epsilon, dtype, param_dtype, "final_norm")(x)
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        hidden = layers.constrain(x, ("batch", "length", "embed"))
        if outputs == "hidden":
            return hidden
        logits = self._logits(embed, hidden)
        return (logits, hidden) if outputs == "both" else logits

    def _logits(self, embed: nn.Embed, hidden: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.tie_embeddings:
            logits = layers.tied_logits(embed, hidden)
        else:
            logits = layers.dense(
                cfg.vocab_size, ("embed", "vocab"), dtype=jnp.dtype(cfg.dtype),
                param_dtype=jnp.dtype(cfg.param_dtype), features_first=self.decode is not None,
                name="lm_head",
            )(hidden)
        return layers.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    def project(self, final_states: jax.Array) -> jax.Array:
        """The output layer alone: float32 logits of final states (`outputs='hidden'`), so a
        loss can compute them a chunk at a time (losses.chunked_cross_entropy)."""
        return self(None, final_states=final_states)

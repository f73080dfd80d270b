"""Encoder-decoder Transformer (T5 v1.1 by default; T5 v1.0 by configuration).

T5 v1.1 (Raffel et al. 2020; the v1.1 checkpoints' release notes): pre-RMSNorm, no biases,
gated-GELU MLP, relative position biases (32 buckets, max distance 128; bidirectional in the
encoder, causal in the decoder; one table per stack shared by its layers), no 1/sqrt(d)
scaling of attention logits (the query initialisation carries it), an untied output layer,
and one token embedding shared by the encoder and decoder inputs. T5 v1.0 is
`mlp_activations=('relu',)` and `tie_embeddings=True` (tied logits are scaled by
1/sqrt(embed_dim), as in T5).

The same attention, MLP and norm layers as the decoder-only model (models/layers.py).
Features follow T5X: encoder_input_tokens / _segment_ids / _positions and
decoder_input_tokens / _segment_ids / _positions; segment ids restrict encoder
self-attention, decoder self-attention and cross-attention, so packed examples stay apart.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.models import kv_cache, layers, model_format, position_encodings, stacking

# T5X's initialisers for T5 v1.1: fan-in normal kernels, with the query's divided by
# sqrt(head_dim) because T5 does not scale the attention logits.
ATTENTION_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
MLP_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig:
    """Hyperparameters of an encoder-decoder model; every field is a gin binding."""

    vocab_size: int = 32128
    embed_dim: int = 512
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    num_heads: int = 6
    num_kv_heads: int | None = None
    head_dim: int = 64
    mlp_dim: int = 1024
    mlp_activations: tuple[str, ...] = ("gelu", "linear")
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    norm_epsilon: float = 1e-6
    tie_embeddings: bool = False
    dropout_rate: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    format: model_format.ModelFormat = model_format.ModelFormat()  # special ids

    def __post_init__(self):
        self.format.check_ids(self.vocab_size)
        if self.remat_policy not in stacking.REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {sorted(stacking.REMAT_POLICIES)}, "
                             f"got {self.remat_policy!r}")
        for field in ("vocab_size", "embed_dim", "num_encoder_layers", "num_decoder_layers",
                      "num_heads", "head_dim", "mlp_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    # Read by metrics.flops_per_step.
    @property
    def num_layers(self) -> int:
        return self.num_encoder_layers + self.num_decoder_layers


def _attention(cfg: EncoderDecoderConfig, name: str, decode: str | None = None,
               cross_attention: bool = False) -> layers.Attention:
    def query_init(key, shape, dtype=jnp.float32):
        return ATTENTION_KERNEL_INIT(key, shape, dtype) / np.sqrt(cfg.head_dim)

    return layers.Attention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
        scale_logits=False, dropout_rate=cfg.dropout_rate,
        dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=ATTENTION_KERNEL_INIT, query_init=query_init, decode=decode,
        cross_attention=cross_attention, name=name,
    )


def _norm(cfg: EncoderDecoderConfig, name: str) -> nn.Module:
    return layers.norm("rmsnorm", cfg.norm_epsilon, jnp.dtype(cfg.dtype),
                       jnp.dtype(cfg.param_dtype), name)


def _mlp(cfg: EncoderDecoderConfig, decode: str | None = None) -> layers.Mlp:
    return layers.Mlp(
        hidden_dim=cfg.mlp_dim, activations=tuple(cfg.mlp_activations),
        dropout_rate=cfg.dropout_rate, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype), kernel_init=MLP_KERNEL_INIT,
        features_first=decode is not None, name="mlp",
    )


def _dropout(cfg: EncoderDecoderConfig, x, deterministic: bool):
    return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


class EncoderLayer(nn.Module):
    config: EncoderDecoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, bias):
        cfg = self.config
        h = _norm(cfg, "pre_attention_norm")(x)
        h = _attention(cfg, "self_attention")(h, h, mask, bias=bias,
                                              deterministic=self.deterministic)
        x = x + _dropout(cfg, h, self.deterministic)
        h = _mlp(cfg)(_norm(cfg, "pre_mlp_norm")(x), deterministic=self.deterministic)
        x = x + _dropout(cfg, h, self.deterministic)
        return layers.constrain(x, ("batch", "length", "embed")), None


class DecoderLayer(nn.Module):
    config: EncoderDecoderConfig
    deterministic: bool = True
    decode: str | None = None

    @nn.compact
    def __call__(self, y, encoded, self_mask, cross_mask, bias, positions):
        cfg = self.config
        h = _norm(cfg, "pre_self_attention_norm")(y)
        h = _attention(cfg, "self_attention", self.decode)(
            h, h, self_mask, query_positions=positions, bias=bias,
            deterministic=self.deterministic)
        y = y + _dropout(cfg, h, self.deterministic)
        h = _norm(cfg, "pre_cross_attention_norm")(y)
        h = _attention(cfg, "cross_attention", self.decode, cross_attention=True)(
            h, encoded, cross_mask, deterministic=self.deterministic)
        y = y + _dropout(cfg, h, self.deterministic)
        h = _mlp(cfg, self.decode)(_norm(cfg, "pre_mlp_norm")(y),
                                   deterministic=self.deterministic)
        y = y + _dropout(cfg, h, self.deterministic)
        return layers.constrain(y, ("batch", "length", "embed")), None


def _default_positions(tokens, positions):
    if positions is not None:
        return positions
    batch, length = tokens.shape
    return jnp.broadcast_to(jnp.arange(length), (batch, length))


class Encoder(nn.Module):
    """T5's encoder stack. Its relative position bias (one table for all layers) is built once
    per batch from row indices, [1, heads, q, k], as T5X builds it: inside a packed segment,
    positions advance with the index, so every pair that may attend has the same relative
    position either way, and pairs across segments are masked."""

    config: EncoderDecoderConfig

    @nn.compact
    def __call__(self, embedded, segment_ids, positions, deterministic: bool):
        cfg = self.config
        length = embedded.shape[1]
        mask = layers.attention_mask(segment_ids, segment_ids, causal=False,
                                     query_length=length, key_length=length)
        indices = jnp.arange(length)[None]  # see the class docstring: [1, heads, q, k]
        bias = position_encodings.RelativePositionBias(
            cfg.num_heads, cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance, bidirectional=True,
            dtype=jnp.dtype(cfg.dtype), name="relpos_bias",
        )(indices, indices)
        x = _dropout(cfg, embedded, deterministic)
        x = stacking.stack_blocks(EncoderLayer, cfg, cfg.num_encoder_layers, cfg.scan_layers,
                                cfg.remat_policy, num_args=2, deterministic=deterministic)(
            x, mask, bias)
        return _dropout(cfg, _norm(cfg, "final_norm")(x), deterministic)


class Decoder(nn.Module):
    config: EncoderDecoderConfig
    decode: str | None = None
    max_decode_length: int = 0

    @nn.compact
    def __call__(self, embedded, encoded, segment_ids, positions, encoder_segment_ids,
                 deterministic: bool):
        cfg = self.config
        length, encoded_length = embedded.shape[1], encoded.shape[1]
        query_positions = key_positions = jnp.arange(length)[None]  # see the Encoder's bias
        if self.decode == "step" and not self.is_initializing():
            # A cached step: queries see the cache slots up to their own position.
            self_mask = kv_cache.step_mask(positions, self.max_decode_length)
            query_positions = positions
            key_positions = jnp.arange(self.max_decode_length)[None]
        else:
            self_mask = layers.attention_mask(segment_ids, segment_ids, causal=True,
                                              query_length=length, key_length=length)
        if segment_ids is None and encoder_segment_ids is not None:
            # Unpacked targets over a padded encoder batch: mask only the encoder's padding.
            cross_mask = (encoder_segment_ids > 0)[:, None, None, :]
        else:
            cross_mask = layers.attention_mask(segment_ids, encoder_segment_ids, causal=False,
                                               query_length=length, key_length=encoded_length)
        bias = position_encodings.RelativePositionBias(
            cfg.num_heads, cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance, bidirectional=False,
            dtype=jnp.dtype(cfg.dtype), name="relpos_bias",
        )(query_positions, key_positions)
        y = _dropout(cfg, embedded, deterministic)
        y = stacking.stack_blocks(DecoderLayer, cfg, cfg.num_decoder_layers, cfg.scan_layers,
                                cfg.remat_policy, num_args=5, deterministic=deterministic,
                                decode=self.decode)(
            y, encoded, self_mask, cross_mask, bias, positions)
        return _dropout(cfg, _norm(cfg, "final_norm")(y), deterministic)


class EncoderDecoder(nn.Module):
    """T5-style model returning float32 decoder logits [batch, target_length, vocab]."""

    config: EncoderDecoderConfig
    decode: str | None = None  # cached decoding: 'prefill' or 'step' (see decoding.py)
    max_decode_length: int = 0
    architecture = "encoder_decoder"  # see model_format.of

    def setup(self):
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.token_embed = layers.token_embedder(cfg.vocab_size, cfg.embed_dim,
                                                 dtype=dtype, param_dtype=param_dtype)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, self.decode, self.max_decode_length)
        if not cfg.tie_embeddings:
            self.lm_head = layers.dense(cfg.vocab_size, ("embed", "vocab"), dtype=dtype,
                                        param_dtype=param_dtype, kernel_init=MLP_KERNEL_INIT,
                                        features_first=self.decode is not None)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None,
               *, deterministic: bool = True):
        positions = _default_positions(encoder_input_tokens, encoder_positions)
        embedded = self.token_embed(encoder_input_tokens)
        embedded = layers.constrain(embedded, ("batch", "length", "embed"))
        return self.encoder(embedded, encoder_segment_ids, positions, deterministic)

    def decoder_logits(self, encoded, decoder_input_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, decoder_positions=None, *, deterministic: bool = True,
               outputs: str = "logits"):
        """Decoder logits; `outputs` as in `DecoderLM` ('logits', 'hidden' or 'both')."""
        layers.check_outputs(outputs)
        positions = _default_positions(decoder_input_tokens, decoder_positions)
        embedded = layers.constrain(self.token_embed(decoder_input_tokens),
                                    ("batch", "length", "embed"))
        y = self.decoder(embedded, encoded, decoder_segment_ids, positions,
                         encoder_segment_ids, deterministic)
        if outputs == "hidden":
            return y
        logits = self.project(y)
        return (logits, y) if outputs == "both" else logits

    def project(self, final_states: jax.Array) -> jax.Array:
        """The output layer alone: float32 logits of the decoder's final states, so a loss
        can compute them a chunk at a time (losses.chunked_cross_entropy)."""
        if self.config.tie_embeddings:
            logits = layers.tied_logits(self.token_embed, final_states) / np.sqrt(
                self.config.embed_dim)
        else:
            logits = self.lm_head(final_states)
        return layers.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        *,
        deterministic: bool = True,
        outputs: str = "logits",
        **unused_features: Any,
    ) -> jax.Array:
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              deterministic=deterministic)
        return self.decoder_logits(encoded, decoder_input_tokens, encoder_segment_ids,
                                   decoder_segment_ids, decoder_positions,
                                   deterministic=deterministic, outputs=outputs)

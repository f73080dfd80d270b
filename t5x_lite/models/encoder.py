"""Encoder-only Transformer (BERT by default; RoBERTa by configuration).

BERT (Devlin et al. 2019; as transformers' BertForMaskedLM computes it): word + learned
absolute position + token-type embeddings, summed and LayerNormed; post-LayerNorm blocks
(x = norm(x + attention(x)), then x = norm(x + mlp(x))) with biases everywhere and an exact
(erf) GELU MLP; a masked-LM head that transforms each state (dense, GELU, LayerNorm) and reads
logits off the tied word embeddings plus an output bias. RoBERTa is the same network with no
token types (`type_vocab_size=0`), positions offset by 2 (`position_offset=2`: fairseq counts
them from padding_idx + 1) and LayerNorm epsilon 1e-5. `post_norm=False` gives a pre-norm
stack (no embedding norm, a final norm instead), for ablations.

Inputs are T5X-style packed encoder features: `encoder_input_tokens`, `encoder_segment_ids`
(0 = padding, 1..n = packed examples), `encoder_positions` (restart at 0 per example) and,
optionally, `encoder_token_types` (BERT's sentence A / B). Attention is bidirectional within a
segment and never crosses segments.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.models import layers, model_format, stacking


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Hyperparameters of an encoder-only model; every field is a gin binding."""

    vocab_size: int = 8320
    embed_dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int = 64
    mlp_dim: int = 1024
    mlp_activations: tuple[str, ...] = ("gelu_exact",)  # BERT's "gelu" is the erf form
    head_activation: str = "gelu_exact"  # the MLM head's transform
    norm_type: str = "layernorm"
    norm_epsilon: float = 1e-12
    max_length: int = 512  # rows of the learned position table (offset included)
    type_vocab_size: int = 2  # 0: no token-type embeddings (RoBERTa)
    position_offset: int = 0  # RoBERTa: 2
    use_bias: bool = True
    post_norm: bool = True
    mlm_head: bool = True  # False: logits straight off the tied embeddings
    next_sentence_head: bool = False  # BERT's pooler + NSP classifier (data/next_sentence.py)
    init_stddev: float = 0.02  # BERT's truncated normal for every weight
    dropout_rate: float = 0.0
    dtype: str = "float32"  # activations
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    format: model_format.ModelFormat = model_format.ModelFormat()  # special ids, mask id

    def __post_init__(self):
        self.format.check_ids(self.vocab_size)
        if self.remat_policy not in stacking.REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {sorted(stacking.REMAT_POLICIES)}, "
                             f"got {self.remat_policy!r}")
        for field in ("vocab_size", "embed_dim", "num_layers", "num_heads", "head_dim", "mlp_dim",
                      "max_length"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        for field in ("type_vocab_size", "position_offset"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
        if self.position_offset >= self.max_length:
            raise ValueError(f"position_offset={self.position_offset} leaves no positions in "
                             f"a table of max_length={self.max_length}")
        for name in tuple(self.mlp_activations) + (self.head_activation,):
            if name not in layers.ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r}: one of "
                                 f"{sorted(layers.ACTIVATIONS)}")
        jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)  # raise early on a bad dtype name

    @property
    def kernel_init(self) -> layers.Initializer:
        return nn.initializers.truncated_normal(self.init_stddev)


def _norm(cfg: EncoderConfig, name: str) -> nn.Module:
    return layers.norm(cfg.norm_type, cfg.norm_epsilon, jnp.dtype(cfg.dtype),
                       jnp.dtype(cfg.param_dtype), name)


def _dropout(cfg: EncoderConfig, x, deterministic: bool):
    return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


def _embedder(cfg: EncoderConfig, rows: int, name: str) -> nn.Embed:
    return layers.token_embedder(rows, cfg.embed_dim, stddev=cfg.init_stddev,
                                 dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                                 name=name)


class EncoderBlock(nn.Module):
    """Post-norm (BERT): x = norm(x + f(x)); pre-norm: x = x + f(norm(x)); f = attention, MLP."""

    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        attention = layers.Attention(
            num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads, head_dim=cfg.head_dim,
            use_bias=cfg.use_bias, dropout_rate=cfg.dropout_rate, dtype=dtype,
            param_dtype=param_dtype, kernel_init=cfg.kernel_init, name="self_attention")
        # BERT drops out each sublayer's output (below), not the MLP's hidden units.
        mlp = layers.Mlp(
            hidden_dim=cfg.mlp_dim, activations=tuple(cfg.mlp_activations), use_bias=cfg.use_bias,
            dropout_rate=0.0, dtype=dtype, param_dtype=param_dtype,
            kernel_init=cfg.kernel_init, name="mlp")
        x = layers.constrain(x, ("batch", "length", "embed"))
        if cfg.post_norm:
            x = _norm(cfg, "attention_norm")(x + attention(x, x, mask,
                                                           deterministic=self.deterministic))
            x = layers.constrain(x, ("batch", "length", "embed"))
            x = _norm(cfg, "mlp_norm")(x + _dropout(cfg, mlp(x, deterministic=self.deterministic),
                                                    self.deterministic))
        else:
            h = _norm(cfg, "pre_attention_norm")(x)
            x = x + attention(h, h, mask, deterministic=self.deterministic)
            h = _norm(cfg, "pre_mlp_norm")(x)
            x = x + _dropout(cfg, mlp(h, deterministic=self.deterministic), self.deterministic)
        return layers.constrain(x, ("batch", "length", "embed")), None


class MlmHead(nn.Module):
    """BERT's masked-LM head: dense + activation + norm, then the tied embeddings + a bias."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, x: jax.Array, embed: nn.Embed) -> jax.Array:
        cfg = self.config
        # A square kernel: its output axis is sharded like an MLP's hidden axis.
        x = layers.dense(cfg.embed_dim, ("embed", "mlp"), use_bias=True,
                         kernel_init=cfg.kernel_init, dtype=jnp.dtype(cfg.dtype),
                         param_dtype=jnp.dtype(cfg.param_dtype), name="transform")(x)
        x = layers.ACTIVATIONS[cfg.head_activation](x)
        x = _norm(cfg, "transform_norm")(layers.constrain(x, ("batch", "length", "embed")))
        bias = self.param("output_bias", nn.with_logical_partitioning(
            nn.initializers.zeros_init(), ("vocab",)), (cfg.vocab_size,),
            jnp.dtype(cfg.param_dtype))
        logits = layers.tied_logits(embed, x).astype(jnp.float32)
        return logits + jnp.asarray(bias, jnp.float32)


class NextSentenceHead(nn.Module):
    """BERT's next-sentence classifier: the pooler (dense + tanh) then two logits (IsNext,
    NotNext), float32, at every position; the loss reads them where a pair starts."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        def dense(features, axes, name):
            return layers.dense(features, axes, use_bias=True, kernel_init=cfg.kernel_init,
                                dtype=jnp.float32, param_dtype=jnp.dtype(cfg.param_dtype),
                                name=name)
        pooled = jnp.tanh(dense(cfg.embed_dim, ("embed", "mlp"), "pooler")(x))
        return dense(2, ("mlp", None), "classifier")(pooled).astype(jnp.float32)


class EncoderLM(nn.Module):
    """Bidirectional encoder returning float32 MLM logits [batch, length, vocab].

    `outputs` picks what is returned: 'logits', 'hidden' (the final states [batch, length,
    embed]; the MLM head is then never built, as a classifier's trunk needs) or 'both'
    (logits, hidden). Token types default to 0 and are ignored when `type_vocab_size=0`.
    With `next_sentence_head`, `next_sentence_logits(hidden)` gives BERT's NSP logits.
    """

    config: EncoderConfig
    architecture = "encoder"  # see model_format.of

    @nn.compact
    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        encoder_token_types: jax.Array | None = None,
        *,
        deterministic: bool = True,
        outputs: str = "logits",
        final_states: jax.Array | None = None,
        head: str = "mlm",
        **unused_features: Any,
    ):
        cfg = self.config
        layers.check_outputs(outputs)
        if final_states is not None and head == "next_sentence":
            return self._next_sentence(final_states)
        embed = _embedder(cfg, cfg.vocab_size, "token_embed")
        if final_states is not None:  # `project`: the output layer alone
            return self._logits(embed, final_states)
        length = encoder_input_tokens.shape[1]
        mask = layers.attention_mask(encoder_segment_ids, encoder_segment_ids, causal=False,
                                     query_length=length, key_length=length)
        x = self._embed(embed, encoder_input_tokens, encoder_positions, encoder_token_types,
                        deterministic)
        x = stacking.stack_blocks(EncoderBlock, cfg, cfg.num_layers, cfg.scan_layers,
                                  cfg.remat_policy, num_args=1, deterministic=deterministic)(
            x, mask)
        if not cfg.post_norm:
            x = _norm(cfg, "final_norm")(x)
        hidden = layers.constrain(x, ("batch", "length", "embed"))
        if outputs == "hidden":
            return hidden
        if cfg.next_sentence_head and self.is_initializing():
            self._next_sentence(hidden)  # its parameters; the loss calls it on its own
        logits = self._logits(embed, hidden)
        return (logits, hidden) if outputs == "both" else logits

    def _next_sentence(self, hidden: jax.Array) -> jax.Array:
        if not self.config.next_sentence_head:
            raise ValueError("this encoder has no next-sentence head: set "
                             "EncoderConfig.next_sentence_head = True")
        return NextSentenceHead(self.config, name="next_sentence_head")(hidden)

    def next_sentence_logits(self, final_states: jax.Array) -> jax.Array:
        """BERT's NSP logits [batch, length, 2] of final states (read at a pair's start)."""
        return self(None, final_states=final_states, head="next_sentence")

    def _logits(self, embed: nn.Embed, hidden: jax.Array) -> jax.Array:
        if self.config.mlm_head:
            logits = MlmHead(self.config, name="mlm_head")(hidden, embed)
        else:
            logits = layers.tied_logits(embed, hidden)
        return layers.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    def project(self, final_states: jax.Array) -> jax.Array:
        """The output layer (MLM head) alone: float32 logits of final states, so a loss can
        compute them a chunk at a time (losses.chunked_cross_entropy)."""
        return self(None, final_states=final_states)

    def _embed(self, embed, tokens, positions, token_types, deterministic):
        """Word + position (+ token type) embeddings; BERT normalises their sum."""
        cfg = self.config
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = embed(tokens)
        x = x + _embedder(cfg, cfg.max_length, "position_embed")(positions + cfg.position_offset)
        if cfg.type_vocab_size:
            if token_types is None:
                token_types = jnp.zeros_like(tokens)
            x = x + _embedder(cfg, cfg.type_vocab_size, "token_type_embed")(token_types)
        if cfg.post_norm:
            x = _norm(cfg, "embed_norm")(x)
        x = _dropout(cfg, x, deterministic)
        return layers.constrain(x.astype(jnp.dtype(cfg.dtype)), ("batch", "length", "embed"))

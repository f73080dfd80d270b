"""Prompt + response rows as the model reads them, built on the devices (inside jit).

Preference learning scores (prompt, response) pairs many times per step: the policy's and
the reference's log-probabilities of the response, a value per response token, a reward at
its end. Every one of those reads the same row, laid out exactly as training and scoring lay
out an (inputs, targets) example (data/feature_converters.py, from the model's
`ModelFormat`), so the log-probabilities here are the ones `evaluation.score` gives and the
ones SFT trained (tests/test_rlhf_sequences.py checks both).

Prompts and responses arrive right-padded with their lengths ([batch, Lp], [batch, Lr]);
responses include their EOS when they have one. A row carries one position more than a
training row: its inputs are [start] + prompt + response, so the last real position *reads*
the EOS, which is where a reward model looks (InstructGPT; lm-human-preferences reads the
reward at the last token). Response token k is predicted at position `index[:, k]`:

  decoder-only     inputs [start, p1..pn, r1..rm]  index = n + k        eos_index = n + m
  encoder-decoder  encoder [p1..pn], decoder [start, r1..rm]  index = k  eos_index = m

A decoder-only prefix LM reads the prompt bidirectionally, as it was trained.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from t5x_lite.models import model_format
from t5x_lite.models.model_format import ModelFormat
from t5x_lite.rlhf import ppo_math


@flax.struct.dataclass
class Rows:
    """Model features of (prompt, response) rows and where the response sits in them."""

    features: dict[str, jax.Array]
    index: jax.Array  # [batch, Lr]: the decoder position predicting response token k
    mask: jax.Array  # [batch, Lr] bool: real response tokens (up to and including EOS)


def build(fmt: ModelFormat, prompt, prompt_lengths, response, response_lengths) -> Rows:
    """Rows for right-padded prompts and responses (int32 arrays and their lengths)."""
    prompt, response = jnp.asarray(prompt, jnp.int32), jnp.asarray(response, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    response_lengths = jnp.asarray(response_lengths, jnp.int32)
    k = jnp.arange(response.shape[1])
    mask = k[None] < response_lengths[:, None]
    response = jnp.where(mask, response, fmt.pad_id)
    if fmt.encoder_decoder:
        features = _encoder_decoder_rows(fmt, prompt, prompt_lengths, response,
                                         response_lengths)
        index = jnp.broadcast_to(k, response.shape)
    else:
        features = _decoder_rows(fmt, prompt, prompt_lengths, response, response_lengths)
        index = prompt_lengths[:, None] + k[None]
    return Rows(features=features, index=index, mask=mask)


def _decoder_rows(fmt, prompt, prompt_lengths, response, response_lengths):
    batch, prompt_width = prompt.shape
    length = 1 + prompt_width + response.shape[1]
    j = jnp.arange(length)[None]
    pl, rl = prompt_lengths[:, None], response_lengths[:, None]
    gather = lambda rows, at: jnp.take_along_axis(
        rows, jnp.broadcast_to(jnp.clip(at, 0, rows.shape[1] - 1), (batch, length)), axis=1)
    from_prompt, from_response = gather(prompt, j - 1), gather(response, j - 1 - pl)
    tokens = jnp.where(j == 0, fmt.start_id,
                       jnp.where(j <= pl, from_prompt,
                                 jnp.where(j <= pl + rl, from_response, fmt.pad_id)))
    real = j <= pl + rl
    features = {
        "decoder_input_tokens": tokens.astype(jnp.int32),
        "decoder_segment_ids": real.astype(jnp.int32),
        "decoder_positions": jnp.where(real, j, 0).astype(jnp.int32),
    }
    if fmt.bidirectional_inputs:
        # As the feature converter marks a prefix LM's inputs: the prompt's positions and the
        # one after it (inputs are shifted right by one).
        features["decoder_causal_attention"] = (j <= pl) & (pl > 0)
    return features


def _encoder_decoder_rows(fmt, prompt, prompt_lengths, response, response_lengths):
    batch, prompt_width = prompt.shape
    i = jnp.arange(prompt_width)[None]
    # An empty prompt is read as a lone EOS, as the feature converter does.
    empty = (prompt_lengths == 0)[:, None]
    encoder = jnp.where(empty & (i == 0), fmt.eos_id, prompt)
    encoder_real = i < jnp.maximum(prompt_lengths, 1)[:, None]
    j = jnp.arange(1 + response.shape[1])[None]
    tokens = jnp.concatenate([jnp.full((batch, 1), fmt.start_id, jnp.int32), response], 1)
    real = j <= response_lengths[:, None]
    return {
        "encoder_input_tokens": jnp.where(encoder_real, encoder, fmt.pad_id).astype(jnp.int32),
        "encoder_segment_ids": encoder_real.astype(jnp.int32),
        "encoder_positions": jnp.where(encoder_real, i, 0).astype(jnp.int32),
        "decoder_input_tokens": jnp.where(real, tokens, fmt.pad_id).astype(jnp.int32),
        "decoder_segment_ids": real.astype(jnp.int32),
        "decoder_positions": jnp.where(real, j, 0).astype(jnp.int32),
    }


def build_ranked(fmt: ModelFormat, batch: dict[str, jax.Array]) -> Rows:
    """Rows of every (prompt, response k) of a comparison batch ({prompt [B, Lp],
    prompt_lengths, responses [B, K, Lr], response_lengths [B, K]}), flattened to [B·K]."""
    k = batch["responses"].shape[1]
    repeat = lambda x: jnp.repeat(x, k, axis=0)
    flat = lambda x: x.reshape((-1, *x.shape[2:]))
    return build(fmt, repeat(batch["prompt"]), repeat(batch["prompt_lengths"]),
                 flat(batch["responses"]), flat(batch["response_lengths"]))


def at_response(per_position: jax.Array, rows: Rows) -> jax.Array:
    """[batch, length, ...] values at the positions predicting each response token."""
    index = rows.index.reshape(rows.index.shape + (1,) * (per_position.ndim - 2))
    return jnp.take_along_axis(per_position, index, axis=1)


def response_outputs(module, params, rows: Rows, **kwargs):
    """The module's outputs (logits, values, or both) at the positions predicting each
    response token: [batch, Lr, ...]. A decoder-only model runs its output layer only there
    (`logits_at`), not over the prompt: the vocabulary projection is a large share of a small
    model's FLOPs."""
    if model_format.of(module).encoder_decoder:
        return jax.tree.map(lambda x: at_response(x, rows), apply(module, params, rows, **kwargs))
    return apply(module, params, rows, logits_at=rows.index, **kwargs)


def response_logprobs(logits: jax.Array, rows: Rows, response: jax.Array,
                      temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(log π(r_k | prompt, r_<k) at `temperature`, entropy of that distribution), both
    [batch, Lr] float32 and 0 after the response, from the logits at the response's
    positions (`response_outputs`). Rollouts sample at logits / T, so the policy's and the
    reference's log-probs are taken at the same T (else the KL is biased)."""
    logits = logits.astype(jnp.float32) / temperature
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token = jnp.take_along_axis(log_probs, response[..., None].astype(jnp.int32), -1)[..., 0]
    entropy = ppo_math.entropy_from_logits(logits)
    return jnp.where(rows.mask, token, 0.0), jnp.where(rows.mask, entropy, 0.0)


def last_real_index(segment_ids: jax.Array) -> jax.Array:
    """[batch] index of each row's last real (segment id > 0) position: the EOS of a
    response row, whichever side the row is padded on."""
    real = segment_ids > 0
    length = real.shape[-1]
    return length - 1 - jnp.argmax(real[..., ::-1], axis=-1)


def at_last_token(values: jax.Array, features: dict[str, Any]) -> jax.Array:
    """A per-position score [batch, length] read at each row's last real decoder token."""
    index = last_real_index(features["decoder_segment_ids"])
    return jnp.take_along_axis(values, index[:, None], axis=1)[:, 0]


def apply(module, params, rows: Rows, **kwargs):
    """The module on the rows' features (logits, values, or both for a head with logits)."""
    return module.apply({"params": params}, **rows.features, **kwargs)

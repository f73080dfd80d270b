"""Token-level cross entropy with label smoothing and z-loss, as T5X computes it, whole or a
chunk of positions at a time.

The chunked form never holds the float32 [batch, length, vocab] logits (nor, in the backward
pass, their gradient): the output layer is applied to `chunk_size` positions at a time inside
`jax.checkpoint`, so the backward pass recomputes each chunk's logits instead of storing them
(the memory-lean loss of, e.g., Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary
Language Models", done here with XLA's own ops).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# Vocabularies at least this large get the chunked loss by default (T5's 32,128, LLaMA's
# 32,000, GPT's 50,304): their logits dominate a small model's activation memory.
LARGE_VOCABULARY = 32_000
DEFAULT_CHUNK = 256  # positions per chunk: [batch, 256, vocab] float32 logits at a time


def cross_entropy_with_logits(
    logits: jax.Array,
    targets: jax.Array,
    *,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Per-token loss and z-loss term, both [batch, length], float32.

    Label smoothing puts `1 - label_smoothing` on the target and spreads the rest evenly over
    the other V-1 tokens; the constant entropy of that distribution is subtracted so a perfect
    prediction scores 0 (Szegedy et al. 2016; T5X `cross_entropy_with_logits`).
    z-loss adds `z_loss * log(Z)^2` to keep the softmax normaliser near 1 (PaLM, Chowdhery et
    al. 2022, section 5; 1e-4 there).
    """
    logits = logits.astype(jnp.float32)
    vocab_size = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab_size - 1)
        normalizer = -(
            jax.scipy.special.xlogy(confidence, confidence)
            + (vocab_size - 1) * jax.scipy.special.xlogy(low, low)
        )
        others = jnp.sum(log_probs, axis=-1) - target_log_prob
        loss = -(confidence * target_log_prob + low * others) - normalizer
    else:
        loss = -target_log_prob
    z_term = z_loss * jnp.square(log_z)
    return loss + z_term, z_term


def token_losses(logits: jax.Array, targets: jax.Array, *, label_smoothing: float = 0.0,
                 z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(loss, z-loss term, argmax == target) per token, [batch, length] each."""
    loss, z_term = cross_entropy_with_logits(logits, targets, label_smoothing=label_smoothing,
                                             z_loss=z_loss)
    return loss, z_term, jnp.argmax(logits, axis=-1) == targets


def chunked_token_losses(project: Callable[[jax.Array], jax.Array], states: jax.Array,
                         targets: jax.Array, *, chunk_size: int, label_smoothing: float = 0.0,
                         z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`token_losses(project(states), targets)`, computed `chunk_size` positions at a time
    (module docstring). `project` maps final states [batch, n, embed] to float32 logits
    [batch, n, vocab] (a model's `project` method)."""
    batch, length = targets.shape
    if length <= chunk_size:  # one chunk: padding it would only add output-layer work
        return token_losses(project(states), targets, label_smoothing=label_smoothing,
                            z_loss=z_loss)
    chunks = -(-length // chunk_size)
    pad = chunks * chunk_size - length
    states = jnp.pad(states, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # [chunks, batch, chunk_size, ...]: lax.map walks the leading axis.
    states = states.reshape(batch, chunks, chunk_size, -1).swapaxes(0, 1)
    targets = targets.reshape(batch, chunks, chunk_size).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(chunk):
        chunk_states, chunk_targets = chunk
        return token_losses(project(chunk_states), chunk_targets,
                            label_smoothing=label_smoothing, z_loss=z_loss)

    outputs = jax.lax.map(one_chunk, (states, targets))
    return tuple(x.swapaxes(0, 1).reshape(batch, -1)[:, :length] for x in outputs)


def default_chunk_size(vocab_size: int) -> int | None:
    """The chunk size `chunk_size='auto'` stands for: chunked for large vocabularies only."""
    return DEFAULT_CHUNK if vocab_size >= LARGE_VOCABULARY else None

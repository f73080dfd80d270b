"""Token-level cross entropy with label smoothing and z-loss, as T5X computes it."""
from __future__ import annotations

import jax
import jax.numpy as jnp


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

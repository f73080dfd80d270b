"""Optimizers and learning-rate schedules: thin, named wrappers around optax.

Gin picks one of `adamw` / `adafactor` and one schedule; each returns a plain optax object,
so anything else optax offers can be bound from gin just as well.
"""
from __future__ import annotations

import optax
import jax
import jax.numpy as jnp


def constant(learning_rate: float) -> optax.Schedule:
    return optax.constant_schedule(learning_rate)


def warmup_cosine(
    learning_rate: float, warmup_steps: int, decay_steps: int, end_fraction: float = 0.1
) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then cosine decay to `end_fraction` of it
    at `decay_steps` (counted from step 0, warmup included)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(decay_steps, warmup_steps + 1),
        end_value=learning_rate * end_fraction,
    )


def rsqrt_decay(warmup_steps: int = 10_000, scale: float = 1.0) -> optax.Schedule:
    """T5's inverse-square-root schedule: scale / sqrt(max(step, warmup_steps)).

    Flat at scale / sqrt(warmup_steps) (0.01 for T5's 10k steps) during warmup, then decays
    (Raffel et al. 2020, section 3.1.2).
    """

    def schedule(step):
        return scale * jnp.reciprocal(jnp.sqrt(jnp.maximum(step, warmup_steps).astype(jnp.float32)))

    return schedule


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; weight decay skips vectors (norm scales, biases)."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    chain.append(
        optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                    mask=decay_mask)
    )
    return optax.chain(*chain)


def adafactor(
    learning_rate: optax.ScalarOrSchedule,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    min_dim_size_to_factor: int = 128,
    momentum: float | None = None,
    weight_decay_rate: float | None = None,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """optax's Adafactor with T5's defaults: factored second moments, decay 0.8, update
    clipping at 1.0, updates scaled by parameter RMS, no momentum (Shazeer & Stern 2018)."""
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    chain.append(
        optax.adafactor(
            learning_rate=learning_rate,
            decay_rate=decay_rate,
            clipping_threshold=clipping_threshold,
            multiply_by_parameter_scale=multiply_by_parameter_scale,
            min_dim_size_to_factor=min_dim_size_to_factor,
            momentum=momentum,
            weight_decay_rate=weight_decay_rate,
        )
    )
    return optax.chain(*chain)

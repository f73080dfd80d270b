"""Optimizers and learning-rate schedules: thin, named wrappers around optax.

Gin picks one of `adamw` / `adafactor` and one schedule; each returns a plain optax object,
so anything else optax offers can be bound from gin just as well.

Two decisions are made from parameter paths (flax names), never from array ranks, so a
scanned stack (one leaf per kind, stacked on a leading `layers` axis) is optimised exactly
like the unrolled stack (`layers_0`, `layers_1`, ...) it stands for:
  * `decay_mask`: weight decay applies to kernels and embeddings only;
  * `scanned_mask`: which leaves carry a leading `layers` axis. `per_layer` makes a
    transformation with per-leaf statistics (Adafactor's factored moments, update clipping,
    parameter scale) treat each layer of such a leaf as a parameter of its own, as T5X's
    Adafactor does with its `layers: BATCH` factor rule.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

# Leaf names of t5x_lite's models (flax's names for Dense/Embed/RMSNorm/LayerNorm parameters).
DECAYED = frozenset({"kernel", "embedding"})
# Norm gains and additive biases are not decayed. T5's relative position bias table
# (`rel_embedding`, [heads, buckets]) is an additive bias on the attention logits, not a
# weight that multiplies activations: it is not decayed either (its decay would pull every
# head towards position-blindness rather than regularise a projection).
NOT_DECAYED = frozenset({"scale", "bias", "output_bias", "rel_embedding"})
SCANNED_AXIS = "layers"  # nn.scan's module name in models/stacking.py


def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def decay_mask(params: Any) -> Any:
    """Tree of bools like `params`: True where weight decay applies (kernels, embeddings).

    An unknown leaf name is an error: a new kind of parameter needs a decision here.
    """

    def decide(path, _):
        names = _names(path)
        if names and names[-1] in DECAYED:
            return True
        if names and names[-1] in NOT_DECAYED:
            return False
        raise ValueError(f"weight decay: no rule for parameter {'/'.join(names)!r} "
                         f"(known: {sorted(DECAYED | NOT_DECAYED)})")

    return jax.tree_util.tree_map_with_path(decide, params)


def scanned_mask(params: Any) -> Any:
    """Tree of bools like `params`: True for leaves of a scanned stack (a `layers` module in
    their path), whose leading axis indexes layers."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: SCANNED_AXIS in _names(path), params)


def per_layer(
    inner: optax.GradientTransformation,
    scanned: Callable[[Any], Any] = scanned_mask,
) -> optax.GradientTransformation:
    """`inner` applied to every layer of a scanned leaf as if it were a separate parameter.

    `inner` is vmapped over the leading axis of the leaves `scanned` marks; other leaves and
    state that is not per parameter (step counts, schedules) stay unbatched and shared, so the
    state keeps `inner`'s structure and its step count. Stacks of different depths (encoder
    and decoder) are vmapped separately. `inner` must treat leaves independently: a
    transformation mixing leaves (global-norm clipping) fails under vmap; chain it outside.
    """

    def groups(tree):
        """in_axes trees, one per distinct stack depth: 0 on that stack's leaves, else None."""
        mask = scanned(tree)
        flat = zip(jax.tree.leaves(mask), jax.tree.leaves(tree))
        depths = sorted({leaf.shape[0] for is_scanned, leaf in flat if is_scanned})
        return [jax.tree.map(lambda m, x, d=d: 0 if m and x.shape[0] == d else None,
                             mask, tree) for d in depths]

    def state_axes(state, axes):
        """`axes` on the state's per-parameter trees (moments), None on the rest (counts)."""
        return optax.tree_map_params(inner, lambda _, axis: axis, state, axes,
                                     transform_non_params=lambda _: None)

    def init(params):
        init_fn, all_axes = inner.init, groups(params)
        if all_axes:
            abstract_state = jax.eval_shape(inner.init, params)  # its structure only
        for axes in all_axes:
            init_fn = jax.vmap(init_fn, in_axes=(axes,),
                               out_axes=state_axes(abstract_state, axes))
        return init_fn(params)

    def update(updates, state, params=None):
        update_fn = inner.update
        for axes in groups(updates):
            s_axes = state_axes(state, axes)
            param_axes = None if params is None else axes
            update_fn = jax.vmap(update_fn, in_axes=(axes, s_axes, param_axes),
                                 out_axes=(axes, s_axes))
        return update_fn(updates, state, params)

    return optax.GradientTransformation(init, update)


# ------------------------------------------------------------------------------- schedules
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


# ------------------------------------------------------------------------------ optimizers
def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; weight decay on kernels and embeddings only
    (`decay_mask`), scanned or not. Adam is elementwise, so it needs no `per_layer`."""
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
    clipping at 1.0, updates scaled by parameter RMS, no momentum (Shazeer & Stern 2018).

    Factoring, update clipping and the parameter scale act per layer of a scanned stack
    (`per_layer`), as for the unrolled stack. Optional weight decay follows `decay_mask`;
    optional global-norm clipping comes first, over all parameters.
    """
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    chain.append(per_layer(
        optax.adafactor(
            learning_rate=learning_rate,
            decay_rate=decay_rate,
            clipping_threshold=clipping_threshold,
            multiply_by_parameter_scale=multiply_by_parameter_scale,
            min_dim_size_to_factor=min_dim_size_to_factor,
            momentum=momentum,
            weight_decay_rate=weight_decay_rate,
            weight_decay_mask=decay_mask,
        )
    ))
    return optax.chain(*chain)

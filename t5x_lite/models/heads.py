"""Heads on a language model's trunk: a scalar head (reward models and value functions) and a
classifier head (an encoder's sequence classification).

`ScalarHead(trunk)` runs any language model of this package (decoder-only or
encoder-decoder) for its final hidden states and projects each position to one number. A
reward model reads that number at the last real token of the response (its EOS; see
rlhf/sequences.py); a PPO value function reads it at every response position. With
`with_logits=True` the trunk's output layer is kept and the module returns (logits, values):
the policy with a value head of Ziegler et al. 2019, where policy and value share one trunk.

Parameters are `{'trunk': <the language model's params>, 'head': {'kernel', 'bias'}}`, so an
SFT checkpoint initialises the trunk as it is (without the output layer when it is unused).
The head starts as in OpenAI's lm-human-preferences reward model: kernel ~ N(0, 1/sqrt(d+1)),
bias 0.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


class _OnTrunk(nn.Module):
    """A head on a trunk model: it reads rows as the trunk does (the trunk's config, and so
    its `ModelFormat`, and its architecture)."""

    trunk: nn.Module

    @property
    def config(self):
        return self.trunk.config

    @property
    def architecture(self) -> str:
        return self.trunk.architecture


class ScalarHead(_OnTrunk):
    """One float32 number per position of the trunk's (decoder) sequence: [batch, length]."""

    with_logits: bool = False

    @nn.compact
    def __call__(self, *args: Any, **kwargs: Any):
        kwargs.pop("outputs", None)
        out = self.trunk(*args, outputs="both" if self.with_logits else "hidden", **kwargs)
        logits, hidden = out if self.with_logits else (None, out)
        embed_dim = hidden.shape[-1]
        kernel_init = nn.initializers.normal(stddev=1.0 / np.sqrt(embed_dim + 1))
        values = nn.Dense(
            1,
            kernel_init=nn.with_logical_partitioning(kernel_init, ("embed", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
            dtype=jnp.float32, param_dtype=jnp.float32, name="head",
        )(hidden.astype(jnp.float32))[..., 0]
        return (logits, values) if self.with_logits else values


class ClassifierHead(_OnTrunk):
    """Class logits [batch, num_classes] (float32) from an encoder trunk (BERT, RoBERTa).

    Each row must hold one example (no packing): 'first' pools its first position (BERT's
    [CLS]) through BERT's pooler, dense + tanh; 'mean' averages the positions whose
    `encoder_segment_ids` are > 0 (all positions without segment ids). Dropout (BERT's, before
    the classifier) applies when not `deterministic`. Parameters are `{'trunk', 'pooler'
    ('first' only), 'classifier'}`; the trunk's MLM head is never built. `labels` names the
    classes in order when known (a fine-tuned classifier's, classification.py), so the
    head carries what its outputs mean.
    """

    num_classes: int = 2
    pooling: str = "first"
    dropout_rate: float = 0.0
    labels: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, *args: Any, deterministic: bool = True, **kwargs: Any) -> jax.Array:
        if self.pooling not in ("first", "mean"):
            raise ValueError(f"pooling must be 'first' or 'mean', got {self.pooling!r}")
        if self.labels and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")
        kwargs.pop("outputs", None)
        hidden = self.trunk(*args, outputs="hidden", deterministic=deterministic, **kwargs)
        hidden = hidden.astype(jnp.float32)
        stddev = getattr(self.config, "init_stddev", 0.02)
        if self.pooling == "first":
            pooler = _dense(hidden.shape[-1], ("embed", "mlp"), stddev, "pooler")
            pooled = jnp.tanh(pooler(hidden[:, 0]))
        else:
            segment_ids = kwargs.get("encoder_segment_ids", args[1] if len(args) > 1 else None)
            pooled = _mean_over_segment(hidden, segment_ids)
        pooled = nn.Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
        return _dense(self.num_classes, ("embed", None), stddev, "classifier")(pooled)


def _dense(features: int, axes: tuple, stddev: float, name: str) -> nn.Dense:
    """A float32 dense layer initialised as BERT's are (truncated normal, zero bias)."""
    return nn.Dense(
        features,
        kernel_init=nn.with_logical_partitioning(nn.initializers.truncated_normal(stddev), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
        dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def _mean_over_segment(hidden: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """The mean of each row's non-padding states (segment id > 0)."""
    if segment_ids is None:
        return jnp.mean(hidden, axis=1)
    weights = (segment_ids > 0).astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def with_trunk(head_params: Any, trunk: Any) -> Any:
    """`head_params` with the trunk's part replaced by those of `trunk` that it has (an LM's
    output layer is dropped when the head does not use it); names and shapes must agree."""
    wanted = traverse_util.flatten_dict(dict(head_params["trunk"]), sep="/")
    have = traverse_util.flatten_dict(dict(trunk), sep="/")
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise ValueError(f"the initial language model lacks parameters {missing[:3]} the "
                         "head's trunk needs: is it the same architecture?")
    for name, target in wanted.items():
        if tuple(np.shape(have[name])) != tuple(target.shape):
            raise ValueError(f"initial parameter {name} has shape {np.shape(have[name])} where "
                             f"the trunk has {target.shape}")
    picked = traverse_util.unflatten_dict({k: have[k] for k in wanted}, sep="/")
    return {**head_params, "trunk": picked}


def set_bias(head_params: Any, bias: jax.Array | float) -> Any:
    """The params with the head's bias set (a reward model's normalising offset)."""
    head = dict(head_params["head"])
    head["bias"] = jnp.full_like(head["bias"], bias)
    return {**head_params, "head": head}

"""A scalar head on a language model's trunk: reward models and value functions.

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


class ScalarHead(nn.Module):
    """One float32 number per position of the trunk's (decoder) sequence: [batch, length]."""

    trunk: nn.Module
    with_logits: bool = False

    @property
    def config(self):
        """The trunk's config (and so its `ModelFormat`): the head reads rows as it does."""
        return self.trunk.config

    @property
    def architecture(self) -> str:
        return self.trunk.architecture

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

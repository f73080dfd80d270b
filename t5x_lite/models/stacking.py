"""Stacks of identical layers: scanned (one traced block, parameters stacked on a leading
`layers` axis) or unrolled (`layers_0`, `layers_1`, ...), and conversion between the two.

Training prefers scanned stacks (compile time independent of depth, remat per layer); cached
decoding prefers unrolled ones (a step then reads each layer's weights and cache where they
lie, instead of slicing them out of, and writing the cache back into, stacked arrays at every
step). `unscanned` and `unrolled_params` give the unrolled equivalent of a scanned model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

Path = tuple[str, ...]

REMAT_POLICIES = {
    "none": None,  # keep every activation (no rematerialisation)
    "full": "full",  # keep nothing: recompute the whole block on the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def stack_blocks(block_cls, config, num_layers: int, scan: bool, remat_policy: str,
                 num_args: int, name: str = "layers", **kwargs):
    """Returns a callable running `num_layers` blocks: scanned (one traced block) or unrolled.

    A block is called as `block(x, *args) -> (x, None)`; `args` are the same for every layer
    (masks, position biases, encoder outputs). Scanned parameters get a leading `layers` axis.
    """
    policy = REMAT_POLICIES[remat_policy]
    if policy is not None:
        block_cls = nn.remat(
            block_cls,
            policy=None if policy == "full" else policy,
            prevent_cse=not scan,
        )
    if scan:
        scanned = nn.scan(
            block_cls,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * num_args,
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(config, name=name, **kwargs)
        return lambda x, *args: scanned(x, *args)[0]

    blocks = [block_cls(config, name=f"{name}_{i}", **kwargs) for i in range(num_layers)]

    def run(x, *args):
        for block in blocks:
            x, _ = block(x, *args)
        return x

    return run


def _layer_index(name: str) -> int | None:
    prefix, _, index = name.rpartition("_")
    return int(index) if prefix == "layers" and index.isdigit() else None


def stack_layers(flat: Mapping[Path, np.ndarray]) -> dict[Path, np.ndarray]:
    """`.../layers_i/...` entries -> one `.../layers/...` entry stacked on a leading axis
    (the layout `nn.scan` gives scanned parameters)."""
    out, groups = {}, {}
    for path, x in flat.items():
        depth = next((d for d, name in enumerate(path) if _layer_index(name) is not None), None)
        if depth is None:
            out[path] = x
            continue
        key = path[:depth] + ("layers",) + path[depth + 1:]
        groups.setdefault(key, {})[_layer_index(path[depth])] = x
    for key, by_index in groups.items():
        if sorted(by_index) != list(range(len(by_index))):
            raise ValueError(f"layers of {'/'.join(key)} are not numbered 0..n-1")
        out[key] = np.stack([by_index[i] for i in range(len(by_index))])
    return out


def unstack_layers(flat: Mapping[Path, np.ndarray]) -> dict[Path, np.ndarray]:
    """Inverse of `stack_layers`: `.../layers/...` [n, ...] -> `.../layers_i/...`."""
    out = {}
    for path, x in flat.items():
        if "layers" not in path:
            out[path] = x
            continue
        depth = path.index("layers")
        for i in range(x.shape[0]):
            out[path[:depth] + (f"layers_{i}",) + path[depth + 1:]] = x[i]
    return out


def unscanned(module: nn.Module) -> nn.Module:
    """The same model with unrolled layers."""
    return module.clone(config=dataclasses.replace(module.config, scan_layers=False))


def unrolled_params(module: nn.Module, params: Any) -> Any:
    """`module`'s params (scanned or not) as `unscanned(module)` holds them; works in `jit`."""
    if not module.config.scan_layers:
        return params
    return traverse_util.unflatten_dict(unstack_layers(traverse_util.flatten_dict(dict(params))))

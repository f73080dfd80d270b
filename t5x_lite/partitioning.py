"""Device mesh, logical-axis rules, and the shardings derived from them.

The mesh has three named axes: `data` (pure data parallelism), `fsdp` (data parallelism whose
devices also shard parameters and optimizer state) and `model` (tensor parallelism). Their
sizes come from gin (`MESH_SHAPE`); a -1 takes the devices left over. Model code names logical
axes only; `logical_axis_rules` (a gin macro) maps them onto these mesh axes.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")
LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# The default table (gin_configs/mesh/default.gin holds the same and is what runs use).
# The first rule whose mesh axes are still free wins, so an activation's `embed` stays
# replicated once `batch` has taken `fsdp`, while a parameter's `embed` is sharded over `fsdp`.
DEFAULT_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces a single -1 with the devices left over; checks the product."""
    shape = [int(s) for s in mesh_shape]
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"MESH_SHAPE must have {len(MESH_AXES)} entries {MESH_AXES}, got {shape}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"MESH_SHAPE entries must be positive (one may be -1), got {shape}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            raise ValueError(f"MESH_SHAPE {shape} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"MESH_SHAPE {tuple(shape)} needs {math.prod(shape)} devices, but {num_devices} "
            f"are available"
        )
    return tuple(shape)


def make_mesh(mesh_shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
    """A mesh with axes (data, fsdp, model) over the given devices, or all of them.

    A fully specified shape smaller than the device count uses the first devices (handy on
    CPU; logged, since on a pod it usually means a mistake).
    """
    devices = list(jax.devices() if devices is None else devices)
    wanted = math.prod(int(s) for s in mesh_shape)
    if -1 not in mesh_shape and 0 < wanted < len(devices):
        logging.getLogger(__name__).warning(
            "MESH_SHAPE %s uses %d of %d devices", tuple(mesh_shape), wanted, len(devices))
        devices = devices[:wanted]
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    try:
        device_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # CPU or unusual topologies: plain row-major order is fine
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def logical_sharding(mesh: Mesh, rules: LogicalRules, logical_axes) -> NamedSharding:
    return NamedSharding(mesh, nn.logical_to_mesh_axes(logical_axes, rules))


def batch_sharding(mesh: Mesh, rules: LogicalRules) -> NamedSharding:
    """Sharding of a [batch, length] input feature."""
    return logical_sharding(mesh, rules, ("batch", "length"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh: Mesh, rules: LogicalRules) -> int:
    """How many ways the batch axis is split (the global batch must be a multiple)."""
    spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
    axes = (spec,) if isinstance(spec, str) else (spec or ())
    return math.prod(mesh.shape[a] for a in axes)


def param_shardings(boxed_abstract_params: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """NamedShardings for a params tree whose leaves are flax logically-partitioned boxes."""
    logical_specs = nn.get_partition_spec(boxed_abstract_params)
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def optimizer_state_shardings(
    tx: optax.GradientTransformation,
    abstract_opt_state: Any,
    abstract_params: Any,
    params_shardings: Any,
    mesh: Mesh,
) -> Any:
    """Each optimizer-state leaf that mirrors a parameter gets that parameter's sharding.

    Leaves of another shape (Adafactor's factored row/column statistics, counters) are small
    and replicated.
    """
    repl = replicated(mesh)

    def pick(leaf, param, sharding):
        return sharding if getattr(leaf, "shape", None) == param.shape else repl

    return optax.tree_map_params(
        tx,
        pick,
        abstract_opt_state,
        abstract_params,
        params_shardings,
        transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
    )

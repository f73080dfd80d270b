"""Device mesh, logical-axis rules, and the shardings derived from them.

The mesh has three named axes: `data` (pure data parallelism), `fsdp` (data parallelism whose
devices also shard parameters and optimizer state) and `model` (tensor parallelism). Their
sizes come from gin (`MESH_SHAPE`); a -1 takes the devices left over. On a multi-slice TPU,
`MESH_SHAPE` lays out one slice and `DCN_MESH_SHAPE` the slices. Model code names logical
axes only; `logical_axis_rules` (a gin macro) maps them onto these mesh axes. In a
multi-process run each process feeds the rows of the batch its devices hold (`batch_shard`).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
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


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int, name: str = "MESH_SHAPE",
                       unit: str = "devices") -> tuple[int, ...]:
    """Replaces a single -1 with the devices left over; checks the product."""
    shape = [int(s) for s in mesh_shape]
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"{name} must have {len(MESH_AXES)} entries {MESH_AXES}, got {shape}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"{name} entries must be positive (one may be -1), got {shape}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            raise ValueError(f"{name} {shape} does not divide {num_devices} {unit}")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"{name} {tuple(shape)} needs {math.prod(shape)} {unit}, but {num_devices} "
            f"are available"
        )
    return tuple(shape)


def hybrid_mesh_shapes(mesh_shape: Sequence[int], dcn_mesh_shape: Sequence[int],
                       num_devices: int, num_slices: int) -> tuple[tuple[int, ...], ...]:
    """(per-slice ICI shape, DCN shape) for a multi-slice mesh; the mesh is their product.

    `mesh_shape` lays out the devices of one slice, `dcn_mesh_shape` the slices; each may
    hold one -1.
    """
    if num_devices % num_slices:
        raise ValueError(f"{num_devices} devices do not split evenly into {num_slices} slices")
    dcn = resolve_mesh_shape(dcn_mesh_shape, num_slices, "DCN_MESH_SHAPE", "slices")
    ici = resolve_mesh_shape(mesh_shape, num_devices // num_slices, "MESH_SHAPE (per slice)")
    return ici, dcn


def _is_multi_host(devices) -> bool:
    return jax.process_count() > 1 or len({d.process_index for d in devices}) > 1


def _slice_attribute(devices) -> str:
    """Multi-slice TPUs tag devices with `slice_index`; elsewhere each process is a slice."""
    return "slice_index" if all(hasattr(d, "slice_index") for d in devices) else "process_index"


def device_mesh(mesh_shape: Sequence[int], devices: Sequence[Any],
                dcn_mesh_shape: Sequence[int] | None = None) -> np.ndarray:
    """The devices arranged in the (data, fsdp, model) mesh shape, topology-aware on TPU
    (mesh_utils maps the axes onto the torus, splitting a physical axis only when the shape
    leaves no other way; any other failure is raised, never papered over with a reshape).

    A fully specified shape smaller than the device count uses the first devices in a
    single process (handy for inference on CPU; logged). In a multi-process run that is an
    error: the first devices of a global list belong to some hosts only.
    """
    devices = list(devices)
    if dcn_mesh_shape is not None:
        attribute = _slice_attribute(devices)
        num_slices = len({getattr(d, attribute) for d in devices})
        ici, dcn = hybrid_mesh_shapes(mesh_shape, dcn_mesh_shape, len(devices), num_slices)
        return mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices, process_is_granule=attribute == "process_index",
            allow_split_physical_axes=True)
    if _slice_attribute(devices) == "slice_index":
        slices = len({d.slice_index for d in devices})
        if slices > 1:
            raise ValueError(f"the devices span {slices} slices: set DCN_MESH_SHAPE (the "
                             f"layout of slices) as well as MESH_SHAPE (the layout in a slice)")
    wanted = math.prod(int(s) for s in mesh_shape)
    if -1 not in mesh_shape and 0 < wanted < len(devices):
        if _is_multi_host(devices):
            raise ValueError(
                f"MESH_SHAPE {tuple(mesh_shape)} uses {wanted} of {len(devices)} devices; a "
                f"multi-process run needs a mesh over every device (use -1 for one axis)")
        logging.getLogger(__name__).warning(
            "MESH_SHAPE %s uses %d of %d devices", tuple(mesh_shape), wanted, len(devices))
        devices = devices[:wanted]
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)


def make_mesh(mesh_shape: Sequence[int] = (-1, 1, 1), devices=None,
              dcn_mesh_shape: Sequence[int] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, model) over the given devices, or all of them.

    With `dcn_mesh_shape` (multi-slice), `mesh_shape` is the layout inside one slice and the
    mesh has their elementwise product as its shape (see `device_mesh`).
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(device_mesh(mesh_shape, devices, dcn_mesh_shape), MESH_AXES)


def logical_sharding(mesh: Mesh, rules: LogicalRules, logical_axes) -> NamedSharding:
    return NamedSharding(mesh, nn.logical_to_mesh_axes(logical_axes, rules))


def batch_sharding(mesh: Mesh, rules: LogicalRules) -> NamedSharding:
    """Sharding of an input feature split by its leading batch axis, of any rank (lengths,
    [batch, length] tokens, [batch, K, length] ranked responses). Sequence dimensions stay
    whole on input: the model's constraints shard activations by `length` where rules say."""
    return logical_sharding(mesh, rules, ("batch",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_axes(rules: LogicalRules) -> tuple[str, ...]:
    """The mesh axes the logical `batch` axis is split over, major first."""
    spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
    return (spec,) if isinstance(spec, str) else tuple(spec or ())


def batch_divisor(mesh: Mesh, rules: LogicalRules) -> int:
    """How many ways the batch axis is split (the global batch must be a multiple)."""
    return math.prod(mesh.shape[a] for a in batch_axes(rules))


def batch_shards(device_processes: np.ndarray, axis_names: Sequence[str],
                 split_axes: Sequence[str]) -> dict[int, tuple[int, int]]:
    """{process: (shard_index, shard_count)} for a mesh given as its devices' process ids.

    The batch is cut into prod(split_axes) pieces, piece i held by the devices whose
    coordinates on `split_axes` ravel (major first) to i. A process must hold one
    contiguous, aligned block of pieces, the same size for every process; its shard index
    is that block's position, so processes holding the same rows (replicas along `model`
    or a non-batch axis) share an index and must be fed the same data.
    """
    device_processes = np.asarray(device_processes)
    sizes = [device_processes.shape[axis_names.index(a)] for a in split_axes]
    num_pieces = math.prod(sizes)
    pieces: dict[int, set[int]] = {}
    for position, process in np.ndenumerate(device_processes):
        coordinates = [position[axis_names.index(a)] for a in split_axes]
        piece = int(np.ravel_multi_index(coordinates, sizes)) if sizes else 0
        pieces.setdefault(int(process), set()).add(piece)
    block = len(next(iter(pieces.values())))
    result = {}
    for process, held in sorted(pieces.items()):
        first = min(held)
        if len(held) != block or held != set(range(first, first + block)) or first % block:
            layout = {p: sorted(h) for p, h in sorted(pieces.items())}
            raise ValueError(
                f"each process must hold one contiguous block of the batch, the same size for "
                f"all, but the {num_pieces} batch pieces (over mesh axes {tuple(split_axes)}) "
                f"are held as {layout} (process: pieces); reorder MESH_SHAPE or the devices so "
                f"each host's devices are adjacent along the batch axes")
        result[process] = (first // block, num_pieces // block)
    return result


def batch_shard(mesh: Mesh, rules: LogicalRules) -> tuple[int, int]:
    """(shard_index, shard_count) of this process's rows of the global batch.

    The input pipeline splits records by this, not by `jax.process_index()`, so processes
    that are replicas of each other (a `model` axis, or any axis the batch is not split
    over, spanning hosts) read the same records. See `batch_shards`.
    """
    processes = np.vectorize(lambda d: d.process_index, otypes=[int])(mesh.devices)
    return batch_shards(processes, mesh.axis_names, batch_axes(rules))[jax.process_index()]


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


def batch_pieces(mesh: Mesh, rules: LogicalRules,
                 num_pieces: int | None = None) -> tuple[range, int]:
    """(the data pieces this process reads, how many pieces there are).

    The global batch is cut into `num_pieces` equal pieces, each read by its own pipeline
    (pipeline.make_sharded_dataset); a process reads the pieces of its batch rows, replicas the
    same ones. A fixed `num_pieces` (DATA_SHARDS) makes the data independent of the mesh and
    of the number of hosts: 2 hosts then train on exactly what 1 host does. By default there
    is one piece per distinct batch shard of the processes (per host, for data parallelism).
    """
    index, count = batch_shard(mesh, rules)
    num_pieces = count if num_pieces is None else num_pieces
    if not isinstance(num_pieces, int) or num_pieces < 1 or num_pieces % count:
        raise ValueError(f"DATA_SHARDS={num_pieces} must be a positive multiple of the {count} "
                         f"batch shards the processes hold on mesh {dict(mesh.shape)}")
    block = num_pieces // count
    return range(index * block, (index + 1) * block), num_pieces


def put_global(tree: Any, shardings: Any) -> Any:
    """Host values (the same on every process, e.g. weights read from a checkpoint) as global
    arrays laid out by `shardings`: each process fills only its own devices' shards, so this
    works on one host and on many (where `jax.device_put` of a host array would not)."""
    def put(value, sharding):
        value = np.asarray(jax.device_get(value))
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put, tree, shardings)

"""The mesh (shapes, no silent fallbacks, multi-slice) and which batch shard each process feeds."""
import dataclasses
import logging

import jax
import numpy as np
import pytest
from jax.experimental import mesh_utils

from t5x_lite import partitioning

BATCH_OVER_DATA = [("batch", "data")] + [r for r in partitioning.DEFAULT_RULES if r[0] != "batch"]


@pytest.mark.parametrize("shape, expected", [
    ((-1, 1, 1), (8, 1, 1)), ((2, -1, 2), (2, 2, 2)), ((1, 1, -1), (1, 1, 8)),
    ((2, 2, 2), (2, 2, 2)), ((1, 8, 1), (1, 8, 1)),
])
def test_make_mesh_shapes(shape, expected):
    mesh = partitioning.make_mesh(shape)
    assert tuple(mesh.shape.values()) == expected
    assert mesh.axis_names == partitioning.MESH_AXES
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


@pytest.mark.parametrize("shape", [(3, -1, 1), (4, 4, 1), (-1, -1, 1), (2, 0, 4), (8, 1)])
def test_make_mesh_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="MESH_SHAPE"):
        partitioning.make_mesh(shape)


def test_single_process_sub_mesh_uses_the_first_devices_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger=partitioning.__name__):
        mesh = partitioning.make_mesh((1, 1, 1))
    assert list(mesh.devices.flat) == [jax.devices()[0]]
    assert "uses 1 of 8 devices" in caplog.text


def test_sub_mesh_is_an_error_with_several_processes(monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="multi-process run needs a mesh over every device"):
        partitioning.make_mesh((1, 1, 1))
    with pytest.raises(ValueError, match="multi-process"):
        partitioning.make_mesh((2, 2, 1))
    assert partitioning.make_mesh((2, -1, 2)).devices.size == 8  # all devices: fine


def test_device_mesh_errors_are_not_swallowed(monkeypatch):
    """The old code fell back to a plain reshape on any exception, hiding topology errors."""
    def refuse(*args, **kwargs):
        raise ValueError("cannot map this mesh onto the physical topology")

    monkeypatch.setattr(mesh_utils, "create_device_mesh", refuse)
    with pytest.raises(ValueError, match="physical topology"):
        partitioning.make_mesh((2, 2, 2))


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    """What mesh_utils reads of a device, for layouts this machine does not have."""
    id: int
    process_index: int
    slice_index: int
    platform: str = "cpu"
    device_kind: str = "cpu"


def fake_slices(num_slices=2, per_slice=4):
    return [FakeDevice(i, i // per_slice, i // per_slice) for i in range(num_slices * per_slice)]


def test_hybrid_mesh_puts_each_slice_in_its_own_block_of_the_dcn_axis():
    devices = fake_slices()
    array = partitioning.device_mesh((1, 2, 2), devices, dcn_mesh_shape=(2, 1, 1))
    assert array.shape == (2, 2, 2)
    assert {d.slice_index for d in array[0].flat} == {0}
    assert {d.slice_index for d in array[1].flat} == {1}
    array = partitioning.device_mesh((2, -1, 1), devices, dcn_mesh_shape=(1, -1, 1))
    assert array.shape == (2, 4, 1)
    assert {d.slice_index for d in array[:, :2].flat} == {0}


def test_multi_slice_devices_need_a_dcn_mesh_shape():
    with pytest.raises(ValueError, match="DCN_MESH_SHAPE"):
        partitioning.device_mesh((-1, 1, 1), fake_slices())


@pytest.mark.parametrize("ici, dcn, devices, slices, expected", [
    ((1, -1, 1), (2, 1, 1), 16, 2, ((1, 8, 1), (2, 1, 1))),
    ((1, 1, 4), (-1, 1, 1), 16, 4, ((1, 1, 4), (4, 1, 1))),
])
def test_hybrid_mesh_shapes(ici, dcn, devices, slices, expected):
    assert partitioning.hybrid_mesh_shapes(ici, dcn, devices, slices) == expected


@pytest.mark.parametrize("ici, dcn, devices, slices, message", [
    ((1, -1, 1), (2, 1), 16, 2, "DCN_MESH_SHAPE must have 3 entries"),
    ((1, -1, 1), (4, 1, 1), 16, 2, "needs 4 slices, but 2"),
    ((1, 4, 1), (2, 1, 1), 16, 2, r"MESH_SHAPE \(per slice\) \(1, 4, 1\) needs 4 devices, but 8"),
    ((1, -1, 1), (3, 1, 1), 16, 3, "do not split evenly into 3 slices"),
])
def test_hybrid_mesh_shape_errors(ici, dcn, devices, slices, message):
    with pytest.raises(ValueError, match=message):
        partitioning.hybrid_mesh_shapes(ici, dcn, devices, slices)


def test_make_mesh_with_a_dcn_shape_on_one_host():
    """Without slice_index (CPU) each process is a slice; here there is one."""
    mesh = partitioning.make_mesh((2, -1, 2), dcn_mesh_shape=(1, 1, 1))
    assert tuple(mesh.shape.values()) == (2, 2, 2)
    with pytest.raises(ValueError, match="DCN_MESH_SHAPE .* needs 2 slices, but 1"):
        partitioning.make_mesh((-1, 1, 1), dcn_mesh_shape=(2, 1, 1))


def row_major_processes(shape, num_processes):
    """Device i of a row-major mesh belongs to process i // devices-per-process, as
    jax.devices() orders a multi-process CPU or GPU job."""
    size = int(np.prod(shape))
    return (np.arange(size) // (size // num_processes)).reshape(shape)


@pytest.mark.parametrize("shape, processes, expected", [
    ((8, 1, 1), 2, [(0, 2), (1, 2)]),
    ((8, 1, 1), 4, [(0, 4), (1, 4), (2, 4), (3, 4)]),
    ((2, 2, 2), 2, [(0, 2), (1, 2)]),
    ((2, 2, 2), 4, [(0, 4), (1, 4), (2, 4), (3, 4)]),
    ((1, 8, 1), 2, [(0, 2), (1, 2)]),
    ((1, 8, 1), 4, [(0, 4), (1, 4), (2, 4), (3, 4)]),
    ((2, 1, 4), 2, [(0, 2), (1, 2)]),
    # The model axis spans processes 0-1 and 2-3: each pair holds the same rows.
    ((2, 1, 4), 4, [(0, 2), (0, 2), (1, 2), (1, 2)]),
    ((1, 1, 8), 2, [(0, 1), (0, 1)]),
])
def test_batch_shards(shape, processes, expected):
    shards = partitioning.batch_shards(row_major_processes(shape, processes),
                                       partitioning.MESH_AXES, ("data", "fsdp"))
    assert [shards[p] for p in range(processes)] == expected


def test_batch_shards_follow_the_rules():
    """With batch over `data` only, fsdp replicas read the same records."""
    axes = partitioning.batch_axes(BATCH_OVER_DATA)
    assert axes == ("data",)
    shards = partitioning.batch_shards(row_major_processes((2, 2, 2), 4),
                                       partitioning.MESH_AXES, axes)
    assert shards == {0: (0, 2), 1: (0, 2), 2: (1, 2), 3: (1, 2)}


@pytest.mark.parametrize("processes", [
    np.array([0, 1, 0, 1, 0, 1, 0, 1]).reshape(8, 1, 1),   # interleaved rows
    np.array([0, 0, 0, 1, 1, 1, 1, 1]).reshape(8, 1, 1),   # unequal blocks
    # Equal, contiguous blocks, but process 1's rows [1, 3) straddle two shards.
    np.array([[0, 0], [0, 1], [1, 2], [2, 2]]).reshape(4, 1, 2),
])
def test_batch_shards_reject_layouts_the_pipeline_cannot_feed(processes):
    with pytest.raises(ValueError, match="one contiguous block of the batch"):
        partitioning.batch_shards(processes, partitioning.MESH_AXES, ("data", "fsdp"))


def test_batch_shard_of_this_process():
    for shape in [(8, 1, 1), (2, 2, 2), (1, 1, 8)]:
        mesh = partitioning.make_mesh(shape)
        assert partitioning.batch_shard(mesh, partitioning.DEFAULT_RULES) == (0, 1)
    assert partitioning.batch_divisor(partitioning.make_mesh((2, 2, 2)),
                                      partitioning.DEFAULT_RULES) == 4

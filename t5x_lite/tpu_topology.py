"""Cloud TPU chips and slice names, and their device descriptions without a TPU.

Users rent slices by accelerator type: `v4-N` and `v5p-N` count TensorCores (two per chip),
`v5litepod-N` (also `v5e-N`) and `v6e-N` count chips. libtpu describes a slice by its chip
grid instead (`v5p:4x4x8`, `v5e:4x4`), and `jax.experimental.topologies` turns such a
description into devices that jit can lower and compile for on any host, CPU included: that
is what `t5x-lite compile` (aot.py) sizes runs with. Both spellings are accepted here.

Chip figures are the Cloud TPU data sheets' (cloud.google.com/tpu/docs/v4, /v5e, /v5p,
/v6e): peak bf16 FLOP/s, HBM capacity and bandwidth per chip. A v4 or v5p chip's two
TensorCores act as one device ("megacore"), as on a real VM.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

from t5x_lite.errors import InputError

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str  # libtpu's name: the part before ':' in 'v5p:4x4x8'
    device_kind: str  # what jax reports for such a device
    peak_flops: float  # bf16 FLOP/s per chip
    hbm_bytes: int
    hbm_bandwidth: float  # bytes/s
    torus_dims: int  # 3: v4 and v5p (4-chip hosts, cubes); 2: v5e and v6e
    cores_per_chip_in_name: int  # 2 where the accelerator type counts TensorCores
    max_chips: int  # the largest single slice
    usable_hbm_bytes: int  # what libtpu's compiler lets a program use (its refusals say)
    chip_config: str = "default"


# HBM sizes: the data sheets write "32 GiB" (v4), "16 GB" (v5e), "95 GB" (v5p), "32 GB" (v6e),
# taken as GiB. Usable: "exceeds available HBM (30.75G / 15.75G / 95.74G / 31.25G)" in
# libtpu 0.0.42's refusals of too large programs, measured with `t5x-lite compile`.
CHIPS = {
    "v4": Chip("v4", "TPU v4", 275e12, 32 * GiB, 1200e9, 3, 2, 4096, int(30.75 * GiB),
               "megacore"),
    "v5e": Chip("v5e", "TPU v5 lite", 197e12, 16 * GiB, 819e9, 2, 1, 256, int(15.75 * GiB)),
    "v5p": Chip("v5p", "TPU v5", 459e12, 95 * GiB, 2765e9, 3, 2, 6144, int(95.74 * GiB),
                "megacore"),
    "v6e": Chip("v6e", "TPU v6 lite", 918e12, 32 * GiB, 1638e9, 2, 1, 256, int(31.25 * GiB)),
}
# The accelerator-type prefixes Cloud TPU uses, by generation.
PREFIXES = {"v4": "v4", "v5p": "v5p", "v5litepod": "v5e", "v5e": "v5e", "v6e": "v6e"}
_ACCELERATOR_TYPE = re.compile(r"^(v4|v5p|v5litepod|v5e|v6e)-(\d+)$")
_LIBTPU_NAME = re.compile(r"^(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Topology:
    """One TPU slice shape (times `num_slices` identical slices joined over DCN)."""

    name: str  # as the user wrote it
    chip: Chip
    shape: tuple[int, ...]  # chips along each torus axis of one slice
    num_slices: int = 1

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.shape)

    @property
    def num_devices(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def accelerator_type(self) -> str:
        """Cloud TPU's name for one such slice (v5p-256, v5litepod-16)."""
        prefix = "v5litepod" if self.chip.generation == "v5e" else self.chip.generation
        return f"{prefix}-{self.chips_per_slice * self.chip.cores_per_chip_in_name}"

    @property
    def libtpu_name(self) -> str:
        return f"{self.chip.generation}:{'x'.join(map(str, self.shape))}"

    def describe(self) -> str:
        slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
        return (f"{self.accelerator_type} ({self.libtpu_name}{slices}: {self.num_devices} "
                f"{self.chip.device_kind} chips, {self.chip.hbm_bytes / GiB:.0f} GiB HBM each, "
                f"{self.chip.usable_hbm_bytes / GiB:.2f} usable)")

    def devices(self) -> list:
        """The slice's devices as jit sees them on a TPU VM (compile-only: nothing runs)."""
        from jax.experimental import topologies

        # libtpu looks for the VM it runs on (GCE metadata, its workers) and warns on stderr
        # when there is none; a description needs neither. Read once, at libtpu's start.
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", self.accelerator_type)
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        # libtpu takes a machine-wide lock for the chips it drives; compiling drives none,
        # so several compiles (a search beside a test) may run at once.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        options = {"chip_config_name": self.chip.chip_config}
        if self.chips_per_slice < 4:  # smaller than libtpu's default host of 2x2x1 chips
            options["chips_per_host_bounds"] = (*self.shape, 1)[:3]
        try:
            description = topologies.get_topology_desc(
                platform="tpu", topology_name=self.libtpu_name, num_slices=self.num_slices,
                **options)
        except Exception as error:  # noqa: BLE001 - libtpu's reason, in one line
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(f"libtpu cannot describe {self.libtpu_name}: {first}") from error
        return list(description.devices)


def known_names() -> str:
    """The spellings `parse` takes, for error messages."""
    return ("v4-N and v5p-N (N TensorCores = 2 x chips: v4-8 ... v4-4096, v5p-8 ... v5p-12288), "
            "v5litepod-N or v5e-N and v6e-N (N chips: 1, 4, 8, ..., 256), or libtpu's chip grid "
            "(v4:2x2x1, v5p:4x4x8, v5e:4x4, v6e:16x16)")


def parse(name: str, num_slices: int = 1) -> Topology:
    """A Topology from an accelerator type (`v5p-256`) or a libtpu grid (`v5p:4x4x8`)."""
    if not isinstance(num_slices, int) or num_slices < 1:
        raise InputError(f"--num_slices must be a positive integer, got {num_slices!r}")
    grid = _LIBTPU_NAME.match(name)
    if grid:
        chip = CHIPS[grid.group(1)]
        shape = tuple(int(n) for n in grid.group(2).split("x"))
        if len(shape) != chip.torus_dims:
            raise InputError(f"unknown TPU topology {name!r}: {chip.generation} slices are "
                             f"{chip.torus_dims}-D grids; known: {known_names()}")
        return Topology(name, chip, shape, num_slices)
    typed = _ACCELERATOR_TYPE.match(name)
    if not typed:
        raise InputError(f"unknown TPU topology {name!r}; known: {known_names()}")
    chip = CHIPS[PREFIXES[typed.group(1)]]
    count = int(typed.group(2))
    chips, remainder = divmod(count, chip.cores_per_chip_in_name)
    smallest = 4 if chip.torus_dims == 3 else 1
    if remainder or chips < smallest or chips > chip.max_chips or chips & (chips - 1):
        raise InputError(f"unknown TPU topology {name!r}; known: {known_names()}")
    return Topology(name, chip, grid_shape(chips, chip.torus_dims), num_slices)


def grid_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The slice shape Cloud TPU gives a power-of-two chip count: 2-D v5e/v6e slices 1x1,
    2x2, 2x4, 4x4, ..., 16x16; 3-D v4/v5p slices 2x2x1 (one host), 2x2x2, 2x2x4, 2x4x4,
    4x4x4 (a cube), 4x4x8, ... (the data sheets' tables): double the last smallest axis."""
    shape = [2, 2, 1] if dims == 3 else [1, 1]
    size = math.prod(shape)
    while size < chips:
        smallest = min(shape)
        axis = max(i for i, n in enumerate(shape) if n == smallest)
        shape[axis] *= 2
        size *= 2
    return tuple(shape)

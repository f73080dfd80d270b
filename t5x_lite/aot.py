"""Will it fit? The real train step compiled ahead of time for a TPU slice, on any host.

`compile_plan` builds the pretraining `Trainer` (train_loop.build_trainer: the same model,
optimizer, loss, mesh and logical-axis rules `train` runs) over the devices of a TPU
topology description (tpu_topology.py), lowers its jitted train step with the train state
and batch given as shapes carrying their shardings (nothing is materialised) and compiles
it with libtpu's compiler. XLA then reports, per device, the bytes of the arguments (train
state + batch), outputs, the outputs that reuse donated arguments, temporaries and code,
and the FLOPs and HBM bytes of one step. `Report` sets these against the chip's data sheet.

XLA's cost analysis counts a loop's body once, so a scanned stack of L layers (and a scan
over microbatches) would count as one layer. `step_flops` therefore counts the step's FLOPs
on this host's CPU with the stacks unrolled at one and two layers each, and extrapolates to
L (exact: the layers are identical). HBM bytes have no such count (the CPU's would not be
fused as the TPU's are): the larger of XLA's (which counts a loop's body once) and the
bytes the step must move at least, the params read forward and backward per microbatch
and the train state read and written by the optimizer, both per device.

The step-time estimate is a roofline: max(FLOPs / peak FLOP/s, HBM bytes / HBM bandwidth)
per device. It leaves out collectives over ICI and DCN, activations' traffic, and assumes
every matmul runs at peak, so it is a lower bound on the step time (an upper bound on MFU);
rank configurations with it, do not quote it as a measurement. MFU uses the model FLOPs
(metrics.model_flops_per_step: remat's recomputation does not count as useful work).
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from t5x_lite import metrics, partitioning, tpu_topology
from t5x_lite.models import model_format, stacking

GiB = tpu_topology.GiB
EXIT_DOES_NOT_FIT = 3


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run can change without changing the model: the mesh, the global batch, the
    microbatches a step accumulates, and the rematerialisation policy of the layers."""

    mesh_shape: tuple[int, ...]  # (data, fsdp, model) in one slice; -1 allowed
    batch_size: int
    num_microbatches: int = 1
    remat_policy: str | None = None  # None: the model's own

    def label(self) -> str:
        return (f"mesh {self.mesh_shape} batch {self.batch_size} microbatches "
                f"{self.num_microbatches} remat {self.remat_policy}")


@dataclasses.dataclass
class Program:
    """One program compiled for a device: XLA's per-device bytes and counts, or the
    compiler's refusal. libtpu refuses a program larger than the HBM it may use (a little
    under the data sheet's: 15.75 of 16 GiB on v5e); `out_of_memory` is then its one-line
    reason, `usable` the bytes it says it can use, and the temporaries what it says it needed."""

    arguments: int
    outputs: int
    aliased: int  # outputs written into donated arguments
    temporaries: int
    code: int
    xla_flops: float  # as XLA counts them (a loop body once)
    xla_bytes: float  # HBM bytes accessed, counted the same way
    seconds: float  # compile time
    out_of_memory: str | None = None
    usable: int | None = None

    @property
    def total(self) -> int:
        """Peak bytes one device holds while the program runs."""
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

    @classmethod
    def compile(cls, lowered, argument_bytes: int) -> "Program":
        """Compiles `lowered`; `argument_bytes` stand for the arguments if it is refused."""
        started = time.perf_counter()
        try:
            compiled = compile_described(lowered)
        except Exception as error:  # noqa: BLE001 - only the compiler's out-of-memory refusal
            if "RESOURCE_EXHAUSTED" not in str(error):
                raise
            return cls.refused(str(error), argument_bytes, time.perf_counter() - started)
        memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return cls(memory.argument_size_in_bytes, memory.output_size_in_bytes,
                   memory.alias_size_in_bytes, memory.temp_size_in_bytes,
                   memory.generated_code_size_in_bytes, float(cost.get("flops", 0)),
                   float(cost.get("bytes accessed", 0)), time.perf_counter() - started)

    @classmethod
    def refused(cls, message: str, argument_bytes: int, seconds: float) -> "Program":
        line = next((l.strip() for l in message.splitlines() if "RESOURCE_EXHAUSTED" in l),
                    message.strip().splitlines()[0])
        line = line[line.index("RESOURCE_EXHAUSTED"):][:300]
        temporaries, usable = 0, None
        if match := _TEMPORARIES.search(message):
            temporaries, usable = _bytes(*match.groups()[:2]), _bytes(*match.groups()[2:])
        elif match := _USED.search(message):
            temporaries = max(_bytes(*match.groups()[:2]) - argument_bytes, 0)
            usable = _bytes(*match.groups()[2:])
        return cls(argument_bytes, 0, 0, temporaries, 0, 0.0, 0.0, seconds,
                   f"libtpu's compiler: {line}", usable)


def compile_described(lowered):
    """`lowered.compile()` without the persistent compilation cache (the tests keep one): it
    can neither load nor should keep programs for devices that are only described."""
    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        return lowered.compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": GiB, "T": 1024 * GiB}
_SIZE = r"([\d.]+)([KMGT]?)B?"
# libtpu's two phrasings of "the program does not fit".
_TEMPORARIES = re.compile(rf"HLO temporaries \({_SIZE}\) exceeds available HBM \({_SIZE}\)")
_USED = re.compile(rf"Used {_SIZE} of {_SIZE} hbm")


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit])


def fits_on(program: Program, chip: tpu_topology.Chip) -> tuple[bool, int]:
    """(whether it fits, the HBM it was held to: what libtpu lets a program use). The
    compiler itself checks only the temporaries, so a program it accepts may still not fit
    with its arguments: the total decides."""
    hbm = program.usable or chip.usable_hbm_bytes
    return program.out_of_memory is None and program.total <= hbm, hbm


def verdict(program: Program, chip: tpu_topology.Chip) -> str:
    """The one line that says whether it fits, and by how much."""
    fits, hbm = fits_on(program, chip)
    if program.out_of_memory is not None and not program.temporaries:
        return f"does not fit: {program.out_of_memory}"
    if fits:
        return (f"fits: {gib(program.total)} of {gib(hbm)} per device "
                f"({gib(hbm - program.total)} to spare)")
    return (f"does not fit: needs {gib(program.total)} per device, "
            f"{gib(program.total - hbm)} more than the {gib(hbm)} of HBM a "
            f"{chip.device_kind} chip libtpu can use")


@dataclasses.dataclass
class Report:
    """One compiled train step: per-device bytes and FLOPs, and what they mean on the chip."""

    plan: Plan
    topology: tpu_topology.Topology
    mesh: dict[str, int]
    program: Program
    state_bytes: int  # params + optimizer state held by one device
    params_bytes: int
    batch_bytes: int
    step_flops: float  # all devices, remat's recomputation included (`step_flops`)
    parameters: int
    model_flops: float  # per step, all devices (metrics.model_flops_per_step)
    tokens: int  # per step

    @property
    def total(self) -> int:
        return self.program.total

    @property
    def hbm(self) -> int:
        return fits_on(self.program, self.topology.chip)[1]

    @property
    def fits(self) -> bool:
        return fits_on(self.program, self.topology.chip)[0]

    @property
    def flops_per_device(self) -> float:
        return self.step_flops / self.topology.num_devices

    @property
    def bytes_per_device(self) -> float:
        weights = (2 * self.plan.num_microbatches + 1) * self.params_bytes  # + the gradients
        return max(self.program.xla_bytes, weights + 2 * self.state_bytes)

    @property
    def step_seconds(self) -> float:
        chip = self.topology.chip
        return max(self.flops_per_device / chip.peak_flops,
                   self.bytes_per_device / chip.hbm_bandwidth)

    @property
    def bound(self) -> str:
        chip = self.topology.chip
        compute = self.flops_per_device / chip.peak_flops
        return "compute" if compute >= self.bytes_per_device / chip.hbm_bandwidth else "memory"

    @property
    def mfu(self) -> float:
        peak = self.topology.chip.peak_flops * self.topology.num_devices
        return self.model_flops / (self.step_seconds * peak)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.step_seconds

    def verdict(self) -> str:
        return verdict(self.program, self.topology.chip)


def gib(size: float) -> str:
    """Bytes for people: GiB, or MiB below one GiB (tiny models' caches)."""
    if abs(size) < GiB and size:
        return f"{size / 1024**2:.2f} MiB"
    return f"{size / GiB:.2f} GiB"


def sharded_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest
    shard: XLA pads uneven splits up to it)."""
    def leaf(x):
        return math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize

    return sum(leaf(x) for x in jax.tree.leaves(tree))


def with_remat(model, policy: str | None):
    """`model` with its layers rematerialised by `policy` (None: as configured)."""
    if policy is None or policy == model.config.remat_policy:
        return model
    if policy not in stacking.REMAT_POLICIES:
        raise ValueError(f"remat policy {policy!r} is not one of {sorted(stacking.REMAT_POLICIES)}")
    return model.clone(config=dataclasses.replace(model.config, remat_policy=policy))


LAYER_COUNTS = ("num_layers", "num_encoder_layers", "num_decoder_layers")


def step_flops(build_trainer: Callable[..., Any], model, batch_size: int) -> float:
    """FLOPs of one train step over the whole batch, as XLA counts the lowered step on one
    CPU device, with every layer stack unrolled at one and at two layers and extrapolated
    to the model's depth (see the module docstring). Microbatches change no FLOPs."""
    config = model.config
    stacks = [f.name for f in dataclasses.fields(config) if f.name in LAYER_COUNTS]
    mesh = partitioning.make_mesh((1, 1, 1), jax.devices("cpu")[:1])

    def count(layers: Mapping[str, int]) -> float:
        variant = model.clone(config=dataclasses.replace(config, scan_layers=False, **layers))
        trainer = build_trainer(variant, mesh, batch_size=batch_size, num_microbatches=1)
        return float(trainer.lower_train_step().cost_analysis()["flops"])

    shallow = dict.fromkeys(stacks, 1)
    base = count(shallow)
    return base + sum((getattr(config, name) - 1) * (count({**shallow, name: 2}) - base)
                      for name in stacks)


def compile_plan(build_trainer: Callable[..., Any], model, topology: tpu_topology.Topology,
                 devices: Sequence[Any], plan: Plan, *, feature_lengths: Mapping[str, int],
                 dcn_mesh_shape=None, flops: float | None = None) -> Report:
    """Compiles `build_trainer`'s train step for `plan` on `devices` (the topology's);
    `flops`: the plan's `step_flops` if already known (they do not depend on the mesh)."""
    model = with_remat(model, plan.remat_policy)
    mesh = partitioning.make_mesh(plan.mesh_shape, devices, dcn_mesh_shape)
    trainer = build_trainer(model, mesh, batch_size=plan.batch_size,
                            num_microbatches=plan.num_microbatches)
    state, batch = trainer.abstract_state_with_shardings(), trainer.abstract_batch_with_sharding()
    state_bytes = sharded_bytes(state.params) + sharded_bytes(state.opt_state)
    program = Program.compile(trainer.lower_train_step(), state_bytes + sharded_bytes(batch))
    return Report(
        plan=plan, topology=topology, mesh=dict(mesh.shape), program=program,
        state_bytes=state_bytes, params_bytes=sharded_bytes(state.params),
        batch_bytes=sharded_bytes(batch),
        step_flops=step_flops(build_trainer, model, plan.batch_size) if flops is None else flops,
        parameters=metrics.count_params(trainer.abstract_params),
        model_flops=metrics.model_flops_per_step(model, trainer.abstract_params,
                                                 feature_lengths, plan.batch_size),
        tokens=plan.batch_size * sum(feature_lengths.values()))


def memory_lines(program: Program, chip: tpu_topology.Chip, arguments: str) -> list[str]:
    """The per-device memory table of one program; `arguments` says what they hold."""
    hbm = fits_on(program, chip)[1]
    compiled = (f"compiled in {program.seconds:.1f} s" if program.out_of_memory is None else
                f"refused by {program.out_of_memory} ({program.seconds:.1f} s)")
    return [
        f"memory per device ({compiled}):",
        f"  arguments     {gib(program.arguments):>12}  ({arguments})",
        f"  outputs       {gib(program.outputs):>12}  ({gib(program.aliased)} of them in "
        "donated arguments)",
        f"  temporaries   {gib(program.temporaries):>12}",
        f"  code          {gib(program.code):>12}",
        f"  total         {gib(program.total):>12}  of {gib(hbm)} HBM "
        f"({100 * program.total / hbm:.1f}%)"]


def summary(report: Report, model) -> str:
    """The compile command's printout for one plan."""
    chip, plan = report.topology.chip, report.plan
    model_per_device = report.model_flops / report.topology.num_devices
    ratio = report.flops_per_device / max(model_per_device, 1.0)
    lines = [
        f"topology   {report.topology.describe()}",
        f"model      {type(model).__name__} ({model_format.of(model).architecture}, "
        f"{report.parameters:,} parameters)",
        f"plan       mesh {report.mesh}, batch {plan.batch_size} x "
        f"{report.tokens // plan.batch_size} tokens, microbatches {plan.num_microbatches}, "
        f"remat {plan.remat_policy or model.config.remat_policy}",
        *memory_lines(report.program, chip, f"params + optimizer state "
                      f"{gib(report.state_bytes)}, batch {gib(report.batch_bytes)}"),
        "per step:",
        f"  FLOPs per device  {report.flops_per_device:.4g} (model FLOPs {model_per_device:.4g}: "
        f"6N per token + attention; ratio {ratio:.2f})",
    ]
    if report.program.out_of_memory is None:  # a refused program has no cost analysis
        lines += [
            f"  HBM bytes per device  {report.bytes_per_device:.4g} (at least)",
            f"  roofline step time  {report.step_seconds * 1e3:.2f} ms ({report.bound}-bound "
            f"at {chip.peak_flops / 1e12:.0f} TFLOP/s, {chip.hbm_bandwidth / 1e9:.0f} GB/s; "
            "collectives not counted)",
            f"  estimated MFU  {100 * report.mfu:.1f}% (upper bound), "
            f"{report.tokens_per_second:,.0f} tokens/s"]
    return "\n".join(lines + [report.verdict()])

"""`t5x-lite compile`: the run's own plan, or a grid of plans, compiled for a TPU slice.

A plan (aot.Plan) is what a run can change without changing the model: the mesh over data,
fsdp and model, the global batch, the microbatches and the remat policy. `Grid.plans` spans
a few of each; `search` compiles them all (aot.compile_plan) and ranks those that fit by
estimated tokens/s (a roofline, aot.py: compare plans with it, do not quote it); `run` is the
command, printing one plan's figures or the grid's table (and CSV).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterable, Mapping, Sequence

from t5x_lite import aot_decode, partitioning, paths, tpu_topology
from t5x_lite.aot import (EXIT_DOES_NOT_FIT, GiB, Plan, Report, compile_plan, gib, step_flops,
                          summary, with_remat)

def mesh_candidates(num_devices: int, num_heads: int,
                    model_sizes: Iterable[int] = (1, 2, 4, 8),
                    data_sizes: Iterable[int] = (1, 2, 4)) -> list[tuple[int, int, int]]:
    """(data, fsdp, model) shapes over `num_devices`: tensor parallelism over a few sizes
    that divide the heads, a little pure data parallelism, the rest fsdp."""
    shapes = []
    for model, data in itertools.product(model_sizes, data_sizes):
        if num_heads % model or num_devices % (model * data):
            continue
        shapes.append((data, num_devices // (model * data), model))
    return shapes


def search_plans(meshes, batch_sizes, microbatches, remat_policies) -> list[Plan]:
    """The grid's plans; those a batch cannot be split into are left out."""
    plans = []
    for mesh, batch, micro, remat in itertools.product(meshes, batch_sizes, microbatches,
                                                       remat_policies):
        if batch % micro or (batch // micro) % (mesh[0] * mesh[1]):
            continue  # each microbatch must split over the batch shards
        plans.append(Plan(tuple(mesh), batch, micro, remat))
    return plans


def search(compile_one: Callable[[Plan], Report], plans: Sequence[Plan],
           log: Callable[[str], None] = print) -> tuple[list[Report], list[tuple[Plan, str]]]:
    """Compiles every plan; returns (reports ranked by estimated tokens/s, the fitting ones
    first, and (plan, one-line reason) for those that could not compile)."""
    reports, failed = [], []
    for index, plan in enumerate(plans, 1):
        try:
            report = compile_one(plan)
        except Exception as error:  # noqa: BLE001 - a plan XLA refuses is a result too
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            failed.append((plan, reason))
            log(f"[{index}/{len(plans)}] {plan.label()}: failed: {reason}")
            continue
        reports.append(report)
        log(f"[{index}/{len(plans)}] {plan.label()}: {gib(report.total)}, "
            f"{report.step_seconds * 1e3:.1f} ms, {'fits' if report.fits else 'does not fit'}")
    reports.sort(key=lambda r: (not r.fits, -r.tokens_per_second))
    return reports, failed


SEARCH_COLUMNS = ("fits", "data", "fsdp", "model", "batch", "microbatches", "remat",
                  "total_gib", "hbm_gib", "state_gib", "temporaries_gib", "step_ms",
                  "tokens_per_s", "mfu", "bound")


def search_row(report: Report, model) -> dict[str, Any]:
    mesh = report.mesh
    return {"fits": report.fits, "data": mesh["data"], "fsdp": mesh["fsdp"],
            "model": mesh["model"], "batch": report.plan.batch_size,
            "microbatches": report.plan.num_microbatches,
            "remat": report.plan.remat_policy or model.config.remat_policy,
            "total_gib": round(report.total / GiB, 3), "hbm_gib": round(report.hbm / GiB, 3),
            "state_gib": round(report.state_bytes / GiB, 3),
            "temporaries_gib": round(report.program.temporaries / GiB, 3),
            "step_ms": round(report.step_seconds * 1e3, 3),
            "tokens_per_s": round(report.tokens_per_second), "mfu": round(report.mfu, 4),
            "bound": report.bound}


def search_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of `search_row`s."""
    lines = ["| " + " | ".join(SEARCH_COLUMNS) + " |",
             "|" + "---|" * len(SEARCH_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in SEARCH_COLUMNS) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


# What `t5x-lite compile` reads of `train_loop.train`'s gin bindings (the run's own values).
TRAIN_ARGUMENTS = ("model", "optimizer", "learning_rate", "batch_size", "feature_lengths",
                   "mesh_shape", "dcn_mesh_shape", "logical_axis_rules", "objective",
                   "label_smoothing", "z_loss", "num_microbatches", "loss_chunk_size")


@dataclasses.dataclass(frozen=True)
class Grid:
    """What `--search` tries: tensor- and pure data-parallel sizes (fsdp takes the devices
    left over), global batch sizes (None: the run's), microbatch counts and remat policies
    (None: the model's own)."""

    model_parallel: tuple[int, ...] = (1, 4, 8)
    data_parallel: tuple[int, ...] = (1,)
    batch_sizes: tuple[int, ...] | None = None
    microbatches: tuple[int, ...] = (1, 4)
    remat_policies: tuple[str | None, ...] = (None, "dots_with_no_batch_dims", "full")

    def plans(self, model, num_devices: int, batch_size: int) -> list[Plan]:
        remats = dict.fromkeys(model.config.remat_policy if r is None else r
                               for r in self.remat_policies)
        meshes = mesh_candidates(num_devices, model.config.num_heads, self.model_parallel,
                                 self.data_parallel)
        return search_plans(meshes, self.batch_sizes or (batch_size,), self.microbatches,
                            tuple(remats))


def run(train: Mapping[str, Any], build_trainer: Callable[..., Any], *, topology: str,
        num_slices: int = 1, grid: Grid | None = None, csv_path: str | None = None,
        decode: bool = False, log: Callable[[str], None] = print) -> int:
    """`t5x-lite compile`: the run's own plan or, with a `grid`, every plan of it (`decode`:
    and decoding's prefill and step on the run's mesh, aot_decode.py); prints the figures
    and returns the exit code (0 fits, 3 does not)."""
    slice_ = tpu_topology.parse(topology, num_slices)
    dcn = train["dcn_mesh_shape"]
    if num_slices > 1 and dcn is None:
        dcn = (num_slices, 1, 1)  # the slices as data parallelism, as MaxText does by default
    devices = slice_.devices()
    model = train["model"]

    def build(model, mesh, *, batch_size, num_microbatches):
        return build_trainer(
            model, train["optimizer"], train["learning_rate"], mesh, train["logical_axis_rules"],
            feature_lengths=train["feature_lengths"], batch_size=batch_size,
            objective=train["objective"], label_smoothing=train["label_smoothing"],
            z_loss=train["z_loss"], num_microbatches=num_microbatches,
            loss_chunk_size=train["loss_chunk_size"])

    counted: dict[tuple, float] = {}  # step FLOPs by (batch, remat): the mesh changes none

    def compile_one(plan: Plan) -> Report:
        key = (plan.batch_size, plan.remat_policy or model.config.remat_policy)
        if key not in counted:
            counted[key] = step_flops(build, with_remat(model, plan.remat_policy),
                                      plan.batch_size)
        return compile_plan(build, model, slice_, devices, plan, flops=counted[key],
                            feature_lengths=train["feature_lengths"], dcn_mesh_shape=dcn)

    own = Plan(tuple(train["mesh_shape"]), train["batch_size"], train["num_microbatches"])
    if grid is None:
        report = compile_one(own)
        log(summary(report, model))
        fits = report.fits
        if decode:
            mesh = partitioning.make_mesh(own.mesh_shape, devices, dcn)
            trainer = build(model, mesh, batch_size=own.batch_size, num_microbatches=1)
            decoding = aot_decode.compile_decoding(
                trainer, batch=own.batch_size, **decode_lengths(train["feature_lengths"]))
            log(aot_decode.summary(decoding, slice_.chip))
            fits = fits and decoding.fits(slice_.chip)
        return 0 if fits else EXIT_DOES_NOT_FIT
    plans = grid.plans(model, slice_.chips_per_slice, train["batch_size"])
    log(f"searching {len(plans)} plans on {slice_.describe()}")
    reports, failed = search(compile_one, plans, log)
    rows = [search_row(r, model) for r in reports]
    log(search_table(rows))
    if csv_path:
        write_csv(csv_path, rows)
        log(f"wrote {csv_path}")
    fitting = [r for r in reports if r.fits]
    if not fitting:
        log(f"nothing fits: the smallest plan needs "
            f"{gib(min(r.total for r in reports)) if reports else 'n/a'} per device")
        return EXIT_DOES_NOT_FIT
    log(f"best: {fitting[0].plan.label()} ({fitting[0].tokens_per_second:,.0f} tokens/s "
        f"estimated); {len(fitting)} of {len(plans)} plans fit, {len(failed)} failed to compile")
    return 0


def decode_lengths(feature_lengths: Mapping[str, int]) -> dict[str, int]:
    """The decoding shape `--decode` compiles: a decoder continues prompts of half its
    training length up to the whole; an encoder-decoder reads its inputs and writes its
    targets' length."""
    if "inputs" in feature_lengths and "targets" in feature_lengths:
        return dict(prompt_length=feature_lengths["inputs"],
                    max_length=feature_lengths["targets"])
    length = max(feature_lengths.values())
    return dict(prompt_length=length // 2, max_length=length)


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    paths.atomic_write_csv(paths.as_path(path), rows, SEARCH_COLUMNS)

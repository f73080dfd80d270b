"""Training metrics: FLOP accounting and MFU, and the writers (JSONL, TensorBoard, plot).

MFU = model FLOPs per step / (step time × peak FLOP/s of all devices).

Model FLOPs per step (PaLM, Chowdhery et al. 2022, appendix B; as MaxText reports it):
    6 · N · tokens                      dense matmuls, forward (2·N) + backward (4·N)
  + 12 · L · H · Q · T · tokens         attention scores and weighted sums, forward + backward
where N counts the parameters used in matmuls (everything but the input embedding lookup and
the position table; a tied output projection still counts), L layers, H heads, Q head dim,
T sequence length (full T×T attention, as PaLM counts it; the causal half is not subtracted).
Rematerialisation adds hardware FLOPs, not model FLOPs: MFU does not reward recomputation.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import paths, tpu_topology
from t5x_lite.models import model_format

# Dense bf16 peak FLOP/s per chip from vendor data sheets (TPUs: tpu_topology.CHIPS, by the
# device kind jax reports; a real v5p reports "TPU v5").
KNOWN_PEAK_FLOPS = {
    **{chip.device_kind: chip.peak_flops for chip in tpu_topology.CHIPS.values()},
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def count_params(tree: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def matmul_params(params: Any) -> int:
    """Parameters that take part in matmuls: all but the embedding lookup tables (a tied
    embedding also serves as the output projection, so it counts then)."""
    total = count_params(params)
    for table in ("position_embed", "token_type_embed"):
        if table in params:
            total -= count_params(params[table])
    return total


def flops_per_step(
    params: Any, *, tied_embeddings: bool, num_layers: int, num_heads: int, head_dim: int,
    sequence_length: int, tokens_per_step: int,
) -> float:
    """Training FLOPs of one step per the formula in the module docstring."""
    n = matmul_params(params)
    if not tied_embeddings and "token_embed" in params:
        n -= count_params(params["token_embed"])
    attention = 12 * num_layers * num_heads * head_dim * sequence_length
    return float((6 * n + attention) * tokens_per_step)


def model_flops_per_step(model, params: Any, feature_lengths, batch_size: int) -> float:
    """Training FLOPs of one step for a decoder-only, encoder-only or encoder-decoder model.

    Encoder-decoder: each matmul weight counts 6 FLOPs per token it multiplies,
        6 · ((N_encoder + N_cross_kv) · Li + N_decoder · Lt) · B
      + 12 · H · Q · B · (L_enc · Li² + L_dec · Lt² + L_dec · Lt · Li)
    (encoder self-attention, decoder self-attention, cross-attention). The cross-attention
    key and value kernels (N_cross_kv) project the Li encoder outputs, not the Lt targets;
    the output projection counts with the decoder; the relative position tables are lookups
    and do not count (PaLM's accounting, Chowdhery et al. 2022, appendix B, applied per
    token stream; checked against XLA's count of the compiled step in tests/test_flops.py).
    """
    cfg = model.config
    if model_format.of(model).encoder_only:  # logits off the tied embeddings; one stream
        length = max(feature_lengths.values())
        return flops_per_step(
            params, tied_embeddings=True, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
            head_dim=cfg.head_dim, sequence_length=length, tokens_per_step=batch_size * length)
    if not model_format.of(model).encoder_decoder:
        return flops_per_step(
            params, tied_embeddings=cfg.tie_embeddings, num_layers=cfg.num_layers,
            num_heads=cfg.num_heads, head_dim=cfg.head_dim,
            sequence_length=feature_lengths["targets"],
            tokens_per_step=batch_size * feature_lengths["targets"])
    inputs, targets = feature_lengths["inputs"], feature_lengths["targets"]

    def count(stack, keep):
        leaves = jax.tree_util.tree_leaves_with_path(stack)
        names = lambda path: {str(getattr(k, "key", k)) for k in path}
        return sum(math.prod(x.shape) for path, x in leaves if keep(names(path)))

    not_table = lambda names: "relpos_bias" not in names
    cross_kv = lambda names: "cross_attention" in names and bool({"key", "value"} & names)
    n_encoder = count(params["encoder"], not_table)
    n_cross_kv = count(params["decoder"], cross_kv)
    n_decoder = count(params["decoder"], not_table) - n_cross_kv
    n_decoder += count_params(params["token_embed"] if cfg.tie_embeddings else params["lm_head"])
    dense = 6 * ((n_encoder + n_cross_kv) * inputs + n_decoder * targets) * batch_size
    attention = 12 * cfg.num_heads * cfg.head_dim * batch_size * (
        cfg.num_encoder_layers * inputs**2 + cfg.num_decoder_layers * (targets**2 + targets * inputs))
    return float(dense + attention)


def measure_cpu_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """What a large float32 matmul reaches on this machine (one device, all its threads)."""
    device = jax.devices()[0]
    a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops_total(peak_flops_per_device: float | None = None) -> tuple[float, str]:
    """Peak FLOP/s of all devices together, and where the figure came from.

    On CPU, every fake device shares the same cores, so the machine peak is measured once
    and not multiplied by the device count.
    """
    devices = jax.devices()
    if peak_flops_per_device:
        return peak_flops_per_device * len(devices), "gin"
    if devices[0].platform == "cpu":
        return measure_cpu_peak_flops(), "measured f32 matmul"
    kind = devices[0].device_kind
    if kind in KNOWN_PEAK_FLOPS:
        return KNOWN_PEAK_FLOPS[kind] * len(devices), f"data sheet ({kind})"
    return math.nan, f"unknown device kind {kind!r}: set PEAK_FLOPS_PER_DEVICE"


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl and mirrors scalars to TensorBoard.

    On local disk each record is appended. An object store cannot append, so on gs:// the file
    is rewritten whole (one atomic upload, starting from what a resumed run had already
    written) at most every `upload_every_s` seconds and on `close`: uploading it after every
    record would send the whole growing file each time, quadratic over a long run."""

    upload_every_s = 60.0

    def __init__(self, model_dir: str, enabled: bool = True):
        self.enabled = enabled
        directory = paths.as_path(model_dir, check=enabled)
        self.path = directory / "metrics.jsonl"
        self._tb = None
        self._lines: list[str] | None = None  # the whole file, where it cannot be appended to
        self._uploaded_at, self._pending = time.monotonic(), False
        if enabled:
            paths.ensure_dir(directory)
            if not paths.is_local(directory):
                self._lines = (self.path.read_text().splitlines(keepends=True)
                               if self.path.exists() else [])
            from tensorboardX import SummaryWriter  # heavy import only on the writing host

            # tensorboardX writes gs:// itself (google-cloud-storage, from the gcs extra).
            self._tb = SummaryWriter(str(directory / "tensorboard"))

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: _plain(v) for k, v in values.items()})
        line = json.dumps(record) + "\n"
        if self._lines is None:
            with self.path.open("a") as f:
                f.write(line)
                f.flush()
        else:
            self._lines.append(line)
            self._pending = True
            if time.monotonic() - self._uploaded_at >= self.upload_every_s:
                self._upload()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def _upload(self) -> None:
        paths.atomic_write_text(self.path, "".join(self._lines))
        self._uploaded_at, self._pending = time.monotonic(), False

    def close(self) -> None:
        if self._pending:
            self._upload()
        if self._tb is not None:
            self._tb.close()


def _plain(value):
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        value = np.asarray(value).item()
    return value


def read_metrics(model_dir: str) -> list[dict]:
    path = paths.as_path(model_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(model_dir: str, filename: str = "loss.png") -> str | None:
    """Train and validation loss against step, written atomically next to the metrics."""
    directory = paths.as_path(model_dir)
    records = read_metrics(model_dir)
    train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    valid = [(r["step"], r["eval/loss"]) for r in records if "eval/loss" in r]
    if not train and not valid:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if valid:
        ax.plot(*zip(*valid), "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy (nats/token)")
    ax.set_title(directory.name)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, directory / filename)


def plot_metrics(model_dir: str, names: Sequence[str], filename: str) -> str | None:
    """One panel per logged metric in `names` (those present) against step, written
    atomically next to the metrics: a job's figures beyond its loss (PPO's score, KL, β)."""
    records = read_metrics(model_dir)
    series = {name: [(r["step"], r[name]) for r in records if name in r] for name in names}
    series = {name: points for name, points in series.items() if points}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(series))
    rows = -(-len(series) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), dpi=100,
                             squeeze=False)
    for ax, (name, points) in zip(axes.flat, series.items()):
        ax.plot(*zip(*points), "-", lw=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    return save_figure(fig, paths.as_path(model_dir) / filename)


def save_figure(fig, path) -> str:
    """Writes `fig` as a PNG atomically (local or gs://) and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with paths.atomic_output(path, binary=True) as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    return str(path)


def parameter_counts(model, sequence_length: int = 8) -> dict[str, int]:
    """Parameters per top-level module and in total, from shapes alone (`jax.eval_shape`):
    no memory is allocated, so a 175B-parameter config is counted in seconds."""
    tokens = jax.ShapeDtypeStruct((1, sequence_length), jnp.int32)
    fmt = model_format.of(model)
    inputs = {} if fmt.encoder_only else {"decoder_input_tokens": tokens}
    if fmt.encoder_decoder or fmt.encoder_only:
        inputs["encoder_input_tokens"] = tokens

    def init(inputs):
        return model.init(jax.random.key(0), **inputs)["params"]

    params = jax.eval_shape(init, inputs)
    counts = {name: count_params(subtree) for name, subtree in params.items()}
    counts["total"] = sum(counts.values())
    return counts

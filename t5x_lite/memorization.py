"""Extractable memorization of the training data (Carlini et al. 2023, "Quantifying
Memorization Across Neural Language Models", section 3).

A training sequence s = p || c, with a prefix p of k tokens and a continuation c of n tokens,
is *extractable* when greedy decoding from p reproduces c exactly. Carlini et al. find the
rate grows log-linearly with how often s is duplicated in the training data and with k, so
windows are sampled per duplicate-count bucket (powers of two) and every k reuses the same
continuation: with K = max(k), each window has K + n tokens and a prompt of k tokens is the k
tokens right before the last n. Besides the exact rate we report the fraction of the n
continuation tokens that match position by position.

The training data is read as the decoder reads it in training (data/pipeline.py with
CausalLM or PrefixLM): each record tokenized, cut into chunks of the objective's raw length
with EOS appended to every chunk. Those rows are what the model saw contiguously, so windows
and duplicate counts never cross a row boundary; rows shorter than K + n hold no window and
are counted as skipped. With `concatenate_documents` the chunks are cut from the shuffled
stream, so where they start and which documents meet changes with the shuffle: there each
document (no EOS) is a row, and only windows inside a document count.

Counts come from a hash index over every window (two 64-bit polynomial hashes), confirmed
token by token for the windows reported, so a collision cannot inflate them. The index holds
every window of the split in memory (~40 bytes a token): cap it with `max_documents`.
"""
from __future__ import annotations

import json
from typing import Sequence

import jax
import numpy as np

from t5x_lite import decoding, inference, metrics, partitioning, paths
from t5x_lite.data import objectives, pipeline
from t5x_lite.models import model_format

# Odd bases are invertible modulo 2**64, which turns window hashes into prefix-sum differences.
_BASES = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)


def tokenize_documents(data: pipeline.DatasetConfig, vocabulary, limit: int | None = None):
    """(token ids per usable record, the pipeline's RecordStats counts), in source order;
    records are read and skipped exactly as training reads them (`pipeline.tokenize_record`)."""
    source, stats = data.source(), pipeline.RecordStats()
    count = len(source) if limit is None else min(limit, len(source))
    documents = [pipeline.tokenize_record(source[i], vocabulary=vocabulary,
                                          text_feature=data.text_feature, stats=stats)
                 for i in range(count)]
    return [d for d in documents if d is not None], stats.snapshot()


def training_rows(documents: Sequence[np.ndarray], *, eos_id: int, raw_length: int | None = None,
                  concatenate: bool = False) -> list[np.ndarray]:
    """The token rows a causal decoder trains on: each document cut into chunks of
    `raw_length` (None: whole) followed by EOS, as the pipeline's ChunkTokens cuts them (at
    most pipeline.MAX_CHUNKS_PER_DOCUMENT chunks). `concatenate`: the documents themselves,
    without EOS (module docstring), capped as concat_then_split caps them."""
    cap = None if raw_length is None else raw_length * pipeline.MAX_CHUNKS_PER_DOCUMENT
    documents = [np.asarray(d, np.int64)[:cap] for d in documents]
    if concatenate:
        return documents
    step = raw_length or max([len(d) for d in documents] + [1])
    return [np.append(d[i:i + step], eos_id) for d in documents for i in range(0, len(d), step)]


def _window_hashes(stream: np.ndarray, length: int) -> np.ndarray:
    """[len(stream) - length + 1, 2] hashes of every window, in O(len(stream)) numpy work:
    with prefix sums P of t_j * B^-j (wrapping mod 2**64), window i hashes to
    (P[i + length] - P[i]) * B^i = sum_j t_{i+j} B^j."""
    tokens = np.asarray(stream, np.uint64) + np.uint64(1)
    count = len(tokens) - length + 1
    if count <= 0:
        return np.zeros((0, 2), np.uint64)
    columns = []
    for base in _BASES:
        powers = np.cumprod(np.r_[np.uint64(1), np.full(len(tokens) - 1, base, np.uint64)])
        inverse = np.full(len(tokens) - 1, pow(base, -1, 2**64), np.uint64)
        prefix = np.r_[np.uint64(0), np.cumsum(tokens * np.cumprod(np.r_[np.uint64(1), inverse]))]
        columns.append((prefix[length:length + count] - prefix[:count]) * powers[:count])
    return np.stack(columns, axis=1)


class WindowIndex:
    """Every window of `length` tokens inside a row, sorted by hash: exact occurrence counts
    of given windows, and duplicate-stratified samples of the distinct ones."""

    def __init__(self, rows: Sequence[np.ndarray], length: int):
        self.length = length
        usable = [np.asarray(r, np.int64) for r in rows if len(r) >= length]
        self.rows, self.short_rows = len(rows), len(rows) - len(usable)
        self.short_row_tokens = int(sum(len(r) for r in rows if len(r) < length))
        self.stream = np.concatenate(usable) if usable else np.zeros(0, np.int64)
        sizes = np.asarray([len(r) for r in usable], np.int64)
        offset_in_row = np.arange(len(self.stream)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        valid = offset_in_row <= np.repeat(sizes - length, sizes)
        hashes = _window_hashes(self.stream, length)
        positions = np.flatnonzero(valid[:len(hashes)])
        hashes = hashes[positions]
        order = np.lexsort((hashes[:, 1], hashes[:, 0]))  # stable: first occurrence first
        self.positions, self.hashes = positions[order], hashes[order]

    def __len__(self) -> int:
        return len(self.positions)

    def windows_at(self, positions: np.ndarray) -> np.ndarray:
        return self.stream[np.asarray(positions)[:, None] + np.arange(self.length)]

    def counts(self, windows: np.ndarray) -> np.ndarray:
        """How often each window occurs; positions whose hashes match are confirmed against
        the tokens, so a hash collision is never counted."""
        windows = np.asarray(windows, np.int64).reshape(-1, self.length)
        result = np.zeros(len(windows), np.int64)
        for i, window in enumerate(windows):
            key = _window_hashes(window, self.length)[0]
            lo, hi = np.searchsorted(self.hashes[:, 0], key[0], side="left"), \
                np.searchsorted(self.hashes[:, 0], key[0], side="right")
            candidates = self.positions[lo:hi][self.hashes[lo:hi, 1] == key[1]]
            if len(candidates):
                result[i] = np.all(self.windows_at(candidates) == window, axis=1).sum()
        return result

    def sample(self, num_samples: int, seed: int) -> np.ndarray:
        """Distinct windows, uniformly within buckets of duplicate counts [2^b, 2^(b+1)), the
        buckets sharing `num_samples` equally (a small bucket's unused share goes to the
        others), as Carlini et al. sample; deterministic per seed. Returns [m, length]."""
        if not len(self):
            return np.zeros((0, self.length), np.int64)
        new = np.r_[True, np.any(self.hashes[1:] != self.hashes[:-1], axis=1)]
        starts = np.flatnonzero(new)
        counts = np.diff(np.r_[starts, len(self)])
        buckets = np.floor(np.log2(counts)).astype(int)
        rng = np.random.default_rng(seed)
        groups = sorted((np.flatnonzero(buckets == b) for b in np.unique(buckets)), key=len)
        chosen, remaining = [], num_samples
        for left, members in zip(range(len(groups), 0, -1), groups):
            take = min(len(members), remaining // left)
            chosen.append(np.sort(rng.choice(members, take, replace=False)))
            remaining -= take
        first = self.positions[starts[np.concatenate(chosen)]]
        return self.windows_at(np.sort(first))


def duplicate_counts(documents_tokens: Sequence[np.ndarray], windows: np.ndarray) -> np.ndarray:
    """Occurrences of each window (all of one length) inside the rows `documents_tokens`."""
    windows = np.asarray(windows)
    return WindowIndex(documents_tokens, windows.shape[-1]).counts(windows)


def sample_windows(documents_tokens: Sequence[np.ndarray], length: int, num_samples: int,
                   seed: int = 0) -> np.ndarray:
    """Up to `num_samples` distinct windows, stratified by duplicate count (see
    `WindowIndex.sample`)."""
    return WindowIndex(documents_tokens, length).sample(num_samples, seed)


def _check_decoder(model) -> None:
    if model_format.of(model).encoder_decoder:
        raise ValueError("extractable memorization is defined for language models (a prefix "
                         "continued by the same decoder); this model is an encoder-decoder")


def extraction(module, params, windows: np.ndarray, prompt_length: int,
               continuation_length: int, *, batch_size: int = 32, mesh=None,
               logical_axis_rules=partitioning.DEFAULT_RULES) -> tuple[np.ndarray, np.ndarray]:
    """Greedy continuation of each window's first `prompt_length` tokens, compared with its
    next `continuation_length`: (exact match per window, fraction of matching tokens).
    Batches keep one shape (the last is filled with copies) so decoding compiles once."""
    _check_decoder(module)
    windows = np.asarray(windows, np.int64)
    k, n = prompt_length, continuation_length
    targets, generated = windows[:, k:k + n], []
    for start in range(0, len(windows), batch_size):
        rows = windows[start:start + batch_size, :k]
        full = np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows), axis=0)])
        out = decoding.decode(module, params, full.tolist(), strategy=decoding.Strategy(),
                              max_new_tokens=n, stop_at_eos=False, mesh=mesh,
                              logical_axis_rules=logical_axis_rules if mesh else None)
        generated.append(out["tokens"][:len(rows), 0])
    matches = (np.concatenate(generated) == targets if generated
               else np.zeros((0, n), bool))
    return matches.all(axis=1), matches.mean(axis=1)


def _canaries(sequences_path: str, vocabulary, length: int) -> tuple[list[np.ndarray], int]:
    """The first `length` tokens of each {"text": ...} line; (windows, how many were shorter)."""
    records = inference.read_jsonl(sequences_path, ["text"])
    ids = [inference._token_ids(r, "text", vocabulary, f"{sequences_path} record {i + 1}")
           for i, r in enumerate(records)]
    return [np.asarray(t[:length]) for t in ids if len(t) >= length], \
        sum(len(t) < length for t in ids)


def _rates(records: list[dict]) -> dict:
    return {"windows": len(records),
            "exact_rate": float(np.mean([r["exact"] for r in records])) if records else None,
            "token_fraction": (float(np.mean([r["token_fraction"] for r in records]))
                               if records else None)}


def summarize(records: list[dict], prompt_lengths: Sequence[int]) -> list[dict]:
    """Per k: the training windows' rates overall and per duplicate bucket [2^b, 2^(b+1)),
    and the canaries' rates (kept apart: they are not a sample of the training data)."""
    by_k = []
    for k in sorted(prompt_lengths):
        train = [r for r in records if r["k"] == k and r["source"] == "train"]
        bucket = lambda r: int(np.floor(np.log2(max(r["duplicates"], 1))))
        buckets = [dict(_rates([r for r in train if bucket(r) == b]), low=2**b,
                        high=2**(b + 1) - 1) for b in sorted({bucket(r) for r in train})]
        canaries = [r for r in records if r["k"] == k and r["source"] == "canary"]
        by_k.append(dict(_rates(train), k=k, buckets=buckets, canaries=_rates(canaries)))
    return by_k


def _cell(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown(summary: dict) -> str:
    """Tables per k (duplicate bucket → windows, exact rate, token fraction) and against k."""
    data = summary["data"]
    lines = ["# Extractable memorization (Carlini et al. 2023)", "",
             f"Greedy continuation of {summary['continuation_length']} tokens; windows of "
             f"{summary['window_length']} tokens from {data['rows']} training rows "
             f"({data['windows_indexed']} windows indexed). Skipped as shorter than a "
             f"window: {data['short_rows']} training rows ({data['short_row_tokens']} tokens) "
             f"and {summary['canaries_too_short']} of the canaries.", ""]
    for entry in summary["by_k"]:
        lines += [f"## k = {entry['k']}", "", "| duplicates | windows | exact match | "
                  "token match |", "|---|---:|---:|---:|"]
        canaries = [dict(entry["canaries"], low="canaries", high="canaries")]
        for b in entry["buckets"] + (canaries if entry["canaries"]["windows"] else []):
            name = b["low"] if b["low"] == b["high"] else f"{b['low']}–{b['high']}"
            lines.append(f"| {name} | {b['windows']} | {_cell(b['exact_rate'])} | "
                         f"{_cell(b['token_fraction'])} |")
        lines.append("")
    lines += ["## Against k (training windows)", "", "| k | windows | exact match | token match |",
              "|---:|---:|---:|---:|"]
    lines += [f"| {e['k']} | {e['windows']} | {_cell(e['exact_rate'])} | "
              f"{_cell(e['token_fraction'])} |" for e in summary["by_k"]]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path) -> str:
    """Extraction rate against duplicate count (log-2 axis, a line per k) and against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for entry in summary["by_k"]:
        points = [(b["low"], b["exact_rate"]) for b in entry["buckets"]]
        if points:
            left.plot(*zip(*points), "o-", label=f"k = {entry['k']}")
    left.set_xscale("log", base=2)
    left.set(xlabel="duplicates in the training data", ylabel="exact extraction rate",
             title="by duplicate count", ylim=(-0.02, 1.02))
    entries = [e for e in summary["by_k"] if e["windows"]]
    if entries:
        right.plot([e["k"] for e in entries], [e["exact_rate"] for e in entries], "o-",
                   label="exact match")
        right.plot([e["k"] for e in entries], [e["token_fraction"] for e in entries], "s--",
                   label="token match")
    right.set(xlabel="prompt length k (tokens)", ylabel="rate (training windows)",
              title="by prompt length", ylim=(-0.02, 1.02), xticks=summary["prompt_lengths"])
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return metrics.save_figure(fig, path)


def _check(prompt_lengths, continuation_length, num_samples, batch_size) -> None:
    for name, value in (("continuation_length", continuation_length),
                        ("num_samples", num_samples), ("batch_size", batch_size)):
        least = 0 if name == "num_samples" else 1
        if not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if not prompt_lengths or any(not isinstance(k, int) or k < 1 for k in prompt_lengths):
        raise ValueError(f"prompt_lengths must be positive integers, got {prompt_lengths!r}")


def run(*, model, vocabulary, model_dir: str, data: pipeline.DatasetConfig,
        output_dir: str | None = None, objective=None, feature_lengths=None,
        prompt_lengths: Sequence[int] = (50,), continuation_length: int = 50,
        num_samples: int = 1000, sequences_path: str | None = None,
        max_documents: int | None = None, seed: int = 0, batch_size: int = 32,
        mesh_shape=None, logical_axis_rules=partitioning.DEFAULT_RULES, params=None) -> dict:
    """Measures extractable memorization of `data` (the training split) by the model in
    `model_dir`; process 0 writes memorization.json (summary and a record per window and k),
    memorization.md and memorization.png into `output_dir` (default MODEL_DIR/memorization).

    `objective` / `feature_lengths` are the run's (chunking, see the module docstring);
    `max_documents` indexes only the first records (the index holds every window in memory);
    `sequences_path` adds canaries, {"text": ...} per line, counted in the same index."""
    if isinstance(prompt_lengths, int):
        prompt_lengths = (prompt_lengths,)
    _check(prompt_lengths, continuation_length, num_samples, batch_size)
    _check_decoder(model)
    if objective is not None and not isinstance(objective, (objectives.CausalLM,
                                                            objectives.PrefixLM)):
        raise ValueError(f"objective must be CausalLM or PrefixLM, got {type(objective).__name__}")
    prompt_lengths = sorted(set(prompt_lengths))
    top, n = max(prompt_lengths), continuation_length
    length = top + n
    documents, record_stats = tokenize_documents(data, vocabulary, max_documents)
    raw_length = (objective.raw_length(feature_lengths)
                  if objective is not None and feature_lengths else None)
    rows = training_rows(documents, eos_id=model_format.of(model).eos_id, raw_length=raw_length,
                         concatenate=getattr(objective, "concatenate_documents", False))
    index = WindowIndex(rows, length)
    windows = list(index.sample(num_samples, seed))
    canaries, too_short = _canaries(sequences_path, vocabulary, length) if sequences_path \
        else ([], 0)
    windows = np.asarray(windows + canaries, np.int64).reshape(-1, length)
    sources = ["train"] * (len(windows) - len(canaries)) + ["canary"] * len(canaries)
    model_format.check_row(model, windows, "memorization windows", length=length)
    counts = index.counts(windows)
    params = decoding.prepare_params(model, inference.load(model, model_dir)
                                     if params is None else params)
    mesh = inference.job_mesh(mesh_shape)
    divisor = partitioning.batch_divisor(mesh, logical_axis_rules)
    batch_size = -(-min(batch_size, max(len(windows), 1)) // divisor) * divisor
    records = []
    for k in prompt_lengths:
        exact, fraction = extraction(model, params, windows[:, top - k:], k, n, mesh=mesh,
                                     batch_size=batch_size,
                                     logical_axis_rules=logical_axis_rules)
        records += [{"source": s, "k": k, "duplicates": int(c), "exact": bool(e),
                     "token_fraction": float(f), "tokens": w.tolist(),
                     "text": vocabulary.decode(w.tolist()) if vocabulary else None}
                    for s, c, e, f, w in zip(sources, counts, exact, fraction, windows)]
    summary = {"prompt_lengths": prompt_lengths, "continuation_length": n,
               "window_length": length, "seed": seed, "canaries_too_short": int(too_short),
               "data": {"documents": len(documents), "rows": index.rows,
                        "short_rows": index.short_rows, "short_row_tokens": index.short_row_tokens,
                        "windows_indexed": len(index), "records": record_stats},
               "by_k": summarize(records, prompt_lengths)}
    if jax.process_index() == 0:
        directory = paths.ensure_dir(output_dir or paths.as_path(model_dir) / "memorization")
        paths.atomic_write_text(directory / "memorization.json",
                                json.dumps({"summary": summary, "records": records}, indent=1))
        paths.atomic_write_text(directory / "memorization.md", markdown(summary))
        plot(summary, directory / "memorization.png")
    return summary

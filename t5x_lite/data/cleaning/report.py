"""What cleaning did to a corpus, in the spirit of "What's in My Big Data?" (Elazar et al.
2023): documents and words in and out, removals per reason with examples, lines removed per
rule, PII per type, languages, duplicate-cluster sizes, top repeated n-grams of the output,
and document lengths. Written as report.json, report.md and two plots.

`Tally` is a mergeable summary of outcomes (addition of counters), so the single-process
driver folds outcomes into one and the Beam pipeline uses it as a CombineFn accumulator: the
same code counts both. Words are whitespace-separated tokens (no vocabulary is needed).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
from collections.abc import Iterable, Mapping

from t5x_lite import metrics, paths
from t5x_lite.data.cleaning import steps

EXAMPLES_PER_REASON = 3
SNIPPET_CHARS = 160


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    ngram: int = 10  # WIMBD lists the most common n-grams; long ones expose boilerplate
    top_ngrams: int = 20


def length_bin(words: int) -> int:
    """Documents are binned by powers of two of their word count: bin b holds [2^b, 2^(b+1))."""
    return int(math.log2(words)) if words > 0 else -1


@dataclasses.dataclass
class Tally:
    documents_in: int = 0
    documents_out: int = 0
    words_in: int = 0
    words_out: int = 0
    removed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)  # reason -> [(id, snippet)]
    lines_removed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    pii: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    languages: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    lengths_in: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    lengths_out: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, outcome: steps.Outcome) -> "Tally":
        self.documents_in += 1
        self.words_in += outcome.words_in
        self.lengths_in[length_bin(outcome.words_in)] += 1
        self.lines_removed.update(outcome.lines_removed)
        self.pii.update(outcome.pii)
        if outcome.language is not None:
            self.languages[outcome.language] += 1
        if outcome.kept:
            words = len(outcome.text.split())
            self.documents_out += 1
            self.words_out += words
            self.lengths_out[length_bin(words)] += 1
        else:
            self.removed[outcome.removed_by] += 1
            snippet = outcome.text[:SNIPPET_CHARS]
            self._keep_examples(outcome.removed_by, [(outcome.id, snippet)])
        return self

    def _keep_examples(self, reason: str, new: list) -> None:
        """The examples with the smallest ids: the same whatever the order of arrival."""
        self.examples[reason] = sorted(self.examples.get(reason, []) + new)[:EXAMPLES_PER_REASON]

    def merge(self, other: "Tally") -> "Tally":
        for field in ("documents_in", "documents_out", "words_in", "words_out"):
            setattr(self, field, getattr(self, field) + getattr(other, field))
        for field in ("removed", "lines_removed", "pii", "languages", "lengths_in",
                      "lengths_out"):
            getattr(self, field).update(getattr(other, field))
        for reason, examples in other.examples.items():
            self._keep_examples(reason, list(examples))
        return self


def ngrams(text: str, n: int) -> list[str]:
    words = text.split()
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def top_ngrams(counts: Mapping[str, int], top: int) -> list[tuple[str, int]]:
    """The most frequent n-grams seen more than once; ties broken by the text."""
    repeated = [(gram, count) for gram, count in counts.items() if count > 1]
    return sorted(repeated, key=lambda item: (-item[1], item[0]))[:top]


def cluster_histogram(removed_per_survivor: Iterable[int]) -> dict[int, int]:
    """{cluster size: clusters}: a survivor and the duplicates removed in its favour."""
    return dict(sorted(collections.Counter(1 + n for n in removed_per_survivor).items()))


def build(tally: Tally, config: steps.CleaningConfig, *, exact_clusters: dict[int, int],
          near_clusters: dict[int, int], repeated_ngrams: list, ngram: int) -> dict:
    """The report as plain data (report.json)."""
    def percent(count: int) -> float:
        return round(100.0 * count / max(tally.documents_in, 1), 3)

    removed = {reason: {"documents": tally.removed.get(reason, 0),
                        "percent": percent(tally.removed.get(reason, 0)),
                        "examples": [{"id": i, "text": t} for i, t in
                                     tally.examples.get(reason, [])]}
               for reason in steps.reasons(config)}
    return {
        "documents": {"in": tally.documents_in, "out": tally.documents_out,
                      "removed": tally.documents_in - tally.documents_out},
        "words": {"in": tally.words_in, "out": tally.words_out},
        "removed": removed,
        "lines_removed": dict(sorted(tally.lines_removed.items())),
        "pii": dict(sorted(tally.pii.items())),
        "languages": dict(tally.languages.most_common()),
        "duplicate_clusters": {"exact": _keyed(exact_clusters), "near": _keyed(near_clusters)},
        "top_ngrams": {"n": ngram, "counts": [[g, c] for g, c in repeated_ngrams]},
        "document_words_log2_bins": {"in": _keyed(tally.lengths_in),
                                     "out": _keyed(tally.lengths_out)},
    }


def _keyed(counter: Mapping[int, int]) -> dict[str, int]:
    return {str(key): counter[key] for key in sorted(counter)}


def markdown(report: dict, name: str) -> str:
    docs, words = report["documents"], report["words"]
    lines = [f"# Cleaning report: {name}", "",
             "| | in | out | removed |", "|---|---:|---:|---:|",
             f"| documents | {docs['in']:,} | {docs['out']:,} | {docs['removed']:,} |",
             f"| words | {words['in']:,} | {words['out']:,} | {words['in'] - words['out']:,} |",
             "", "## Documents removed, by reason (each counted once, at the first step that "
             "removed it)", "", "| reason | documents | % of input | example |",
             "|---|---:|---:|---|"]
    for reason, entry in report["removed"].items():
        example = _cell(entry["examples"][0]["text"][:80]) if entry["examples"] else ""
        lines.append(f"| {reason} | {entry['documents']:,} | {entry['percent']} | {example} |")
    for title, key in (("Lines removed, by rule", "lines_removed"),
                       ("PII replaced, by type", "pii"), ("Languages", "languages")):
        lines += ["", f"## {title}", "", "| | count |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in report[key].items()] or ["| (none) | 0 |"]
    lines += ["", "## Duplicate clusters (size: clusters)", ""]
    for kind, sizes in report["duplicate_clusters"].items():
        lines.append(f"- {kind}: " + (", ".join(f"{s}: {c}" for s, c in sizes.items())
                                      or "none"))
    ngram = report["top_ngrams"]
    lines += ["", f"## Most repeated {ngram['n']}-grams in the output", "",
              "| n-gram | count |", "|---|---:|"]
    lines += [f"| {_cell(g)} | {c:,} |" for g, c in ngram["counts"]] or ["| (none repeated) | |"]
    lines += ["", "Plots: duplicate_clusters.png, document_lengths.png", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text that fits in one markdown table cell."""
    return text.replace("\n", " ").replace("|", "\\|")


def write(report: dict, directory, name: str) -> None:
    """report.json, report.md and the two plots, each written atomically."""
    directory = paths.as_path(directory)
    paths.atomic_write_text(directory / "report.json", json.dumps(report, indent=1) + "\n")
    paths.atomic_write_text(directory / "report.md", markdown(report, name))
    _plot_bars(report["duplicate_clusters"], "duplicate cluster size (documents)", "clusters",
               directory / "duplicate_clusters.png", "Duplicate clusters")
    _plot_bars(report["document_words_log2_bins"], "words per document (log2 bin)",
               "documents", directory / "document_lengths.png", "Document lengths")


def _plot_bars(series: Mapping[str, Mapping[str, int]], xlabel: str, ylabel: str, path,
               title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(len(series), 1)
    for i, (label, counts) in enumerate(series.items()):
        xs = [int(k) + i * width for k in counts]
        ax.bar(xs, list(counts.values()), width=width, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    metrics.save_figure(fig, path)

"""The cleaning stages of steps.py run in one process, with the corpus in memory.

For corpora that fit in one machine's memory (python_docs, a few GB of text); beyond that
the same stages run as a Beam pipeline (beam_pipeline.py) with the same result.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable

from t5x_lite.data.cleaning import near_dedup, report, steps
from t5x_lite.data.cleaning.documents import Document


def _live(outcomes: list[steps.Outcome]) -> list[steps.Outcome]:
    return [outcome for outcome in outcomes if outcome.kept]


def exact_dedup(outcomes: list[steps.Outcome]) -> None:
    """Stage 2: of documents with the same text, the smallest id survives."""
    survivors = {}
    for outcome in sorted(outcomes, key=lambda o: o.id):
        first = survivors.setdefault(outcome.text, outcome.id)
        if first != outcome.id:
            outcome.removed_by, outcome.duplicate_of = steps.EXACT_DUPLICATE, first


def line_dedup(outcomes: list[steps.Outcome], config: steps.LineDedup) -> None:
    """Stage 3: a repeated line stays only in the first-ranked document that has it."""
    keys = {o.id: steps.line_keys(o.text, config) for o in outcomes}
    ranks = {o.id: steps.rank(o.text, o.id) for o in outcomes}
    keeper = {}
    for outcome in outcomes:
        for key in keys[outcome.id]:
            if key not in keeper or ranks[outcome.id] < ranks[keeper[key]]:
                keeper[key] = outcome.id
    for outcome in outcomes:
        drop = {key for key in keys[outcome.id] if keeper[key] != outcome.id}
        steps.drop_lines(outcome, drop, config)


def near_duplicates(outcomes: list[steps.Outcome], config: near_dedup.NearDedup) -> None:
    """Stage 5, with one in-memory LSH index (near_dedup.duplicates)."""
    signatures = near_dedup.signatures([o.text for o in outcomes], config)
    items = [(steps.rank(o.text, o.id), o.id, s) for o, s in zip(outcomes, signatures)]
    found = near_dedup.duplicates(items, config)
    for outcome in outcomes:
        if outcome.id in found:
            outcome.removed_by, outcome.duplicate_of = steps.NEAR_DUPLICATE, found[outcome.id]


def clean(documents: Iterable[Document], config: steps.CleaningConfig) -> list[steps.Outcome]:
    """Every document's outcome, in input order."""
    outcomes = [steps.rewrite(document, config) for document in documents]
    if config.exact_dedup:
        exact_dedup(_live(outcomes))
    if config.line_dedup is not None:
        line_dedup(_live(outcomes), config.line_dedup)
    for outcome in _live(outcomes):
        steps.verdict(outcome, config)
    if config.near_dedup is not None:
        near_duplicates(_live(outcomes), config.near_dedup)
    return outcomes


def summarise(outcomes: list[steps.Outcome], config: steps.CleaningConfig,
              report_config: report.ReportConfig) -> dict:
    """The report of a finished run."""
    tally = report.Tally()
    for outcome in outcomes:
        tally.add(outcome)
    clusters = {reason: collections.Counter(o.duplicate_of for o in outcomes
                                            if o.removed_by == reason)
                for reason in (steps.EXACT_DUPLICATE, steps.NEAR_DUPLICATE)}
    grams = collections.Counter()
    for outcome in _live(outcomes):
        grams.update(report.ngrams(outcome.text, report_config.ngram))
    return report.build(
        tally, config,
        exact_clusters=report.cluster_histogram(clusters[steps.EXACT_DUPLICATE].values()),
        near_clusters=report.cluster_histogram(clusters[steps.NEAR_DUPLICATE].values()),
        repeated_ngrams=report.top_ngrams(grams, report_config.top_ngrams),
        ngram=report_config.ngram)

"""The cleaning stages of steps.py as an Apache Beam pipeline, for corpora beyond one machine.

Every cross-document stage is a group-by, so no worker holds the corpus or an index of it:

  exact dup   group by a hash of the text; the smallest id in a group survives.
  lines       group (rank, id) claims by line key; all but the first-ranked claimant drop it,
              and the drops are joined back to their documents (CoGroupByKey).
  near dup    group signatures by LSH bucket (band, band values); within a bucket, pairs whose
              MinHash similarity reaches the threshold name the smaller-ranked one; the
              smallest per document is joined back. Same rule as near_dedup.duplicates.

The per-document work calls the same functions as the single-process driver (local.py) and the
report is the same `report.Tally` used as a CombineFn, so both drivers give the same dataset
and the same report. Runs on any runner: DirectRunner in tests, Dataflow / Flink / Spark with
their pipeline options (README).
"""
from __future__ import annotations

import dataclasses
import json

import apache_beam as beam

from t5x_lite import paths
from t5x_lite.data.cleaning import documents, near_dedup, report, steps


def _split(outcomes, label: str):
    """(live, removed) PCollections."""
    live, removed = outcomes | label >> beam.Partition(lambda o, _: int(not o.kept), 2)
    return live, removed


def _exact_group(item):
    """Stage 2 within a group of equal text hashes (sub-grouped by text, for safety)."""
    _, group = item
    first = {}
    for outcome in sorted(group, key=lambda o: o.id):
        survivor = first.setdefault(outcome.text, outcome.id)
        if survivor == outcome.id:
            yield outcome
        else:
            yield dataclasses.replace(outcome, removed_by=steps.EXACT_DUPLICATE,
                                      duplicate_of=survivor)


def _line_drops(item):
    """All claimants of a line key but the first-ranked one drop it: (id, key)."""
    key, claims = item
    for _, doc_id in sorted(claims)[1:]:
        yield doc_id, key


def _apply_drops(item, config: steps.LineDedup):
    _, joined = item
    (outcome,) = joined["doc"]
    return steps.drop_lines(dataclasses.replace(outcome), set(joined["drop"]), config)


def _near_members(outcome, config: near_dedup.NearDedup):
    signature = near_dedup.signatures([outcome.text], config)[0]
    member = (steps.rank(outcome.text, outcome.id), outcome.id, signature)
    return [(key, member) for key in near_dedup.band_keys(signature, config)]


def _mark_near(item):
    _, joined = item
    (outcome,) = joined["doc"]
    if not joined["dup"]:
        return outcome
    (_, survivor), = joined["dup"]
    return dataclasses.replace(outcome, removed_by=steps.NEAR_DUPLICATE, duplicate_of=survivor)


def _by_id(pcoll, label: str):
    return pcoll | label >> beam.Map(lambda o: (o.id, o))


class _TallyFn(beam.CombineFn):
    def create_accumulator(self):
        return report.Tally()

    def add_input(self, tally, outcome):
        return tally.add(outcome)

    def merge_accumulators(self, tallies):
        tallies = iter(tallies)
        merged = next(tallies)
        for tally in tallies:
            merged.merge(tally)
        return merged

    def extract_output(self, tally):
        return tally


class _TopNgramsFn(beam.CombineFn):
    """The exact top n-grams by (count, text): each accumulator keeps its own top list."""

    def __init__(self, top: int):
        self._top = top

    def create_accumulator(self):
        return []

    def add_input(self, best, item):
        return report.top_ngrams(dict(best + [item]), self._top)

    def merge_accumulators(self, lists):
        return report.top_ngrams(dict(item for best in lists for item in best), self._top)

    def extract_output(self, best):
        return best


def _cluster_sizes(outcomes, reason: str):
    return (outcomes
            | f"{reason} links" >> beam.FlatMap(
                lambda o: [o.duplicate_of] if o.removed_by == reason else [])
            | f"{reason} per survivor" >> beam.combiners.Count.PerElement()
            | f"{reason} counts" >> beam.Values()
            | f"{reason} list" >> beam.combiners.ToList())


class CleanCorpus(beam.PTransform):
    """Reads `shards`, cleans them, writes the report data to `report_path` (JSON) and
    returns the kept documents as TFDS (key, example) pairs."""

    def __init__(self, shards, config: steps.CleaningConfig, report_config: report.ReportConfig,
                 report_path: str):
        super().__init__()
        self._shards, self._config = list(shards), config
        self._report_config, self._report_path = report_config, report_path

    def expand(self, pbegin):
        config = self._config
        outcomes = (pbegin | "Shards" >> beam.Create(self._shards)
                    | "Spread shards" >> beam.Reshuffle()
                    | "Read" >> beam.FlatMap(documents.read_shard)
                    | "Rewrite" >> beam.Map(steps.rewrite, config))
        live, removed = _split(outcomes, "After rewrite")
        finished = [removed]
        if config.exact_dedup:
            live = (live | "By text" >> beam.Map(lambda o: (steps.rank(o.text, "")[0], o))
                    | "Group text" >> beam.GroupByKey() | "Exact" >> beam.FlatMap(_exact_group))
            live, removed = _split(live, "After exact")
            finished.append(removed)
        if config.line_dedup is not None:
            live = self._line_dedup(live, config.line_dedup)
            live, removed = _split(live, "After lines")
            finished.append(removed)
        live = live | "Verdict" >> beam.Map(
            lambda o, c: steps.verdict(dataclasses.replace(o), c), config)
        if config.near_dedup is not None:
            live = self._near_dedup(live, config.near_dedup)
        outcomes = (*finished, live) | "All outcomes" >> beam.Flatten()
        self._report(outcomes)
        return (outcomes | "Kept" >> beam.Filter(lambda o: o.kept)
                | "Examples" >> beam.Map(lambda o: (o.id, {"text": o.text, "id": o.id})))

    @staticmethod
    def _line_dedup(live, config: steps.LineDedup):
        drops = (live | "Line claims" >> beam.FlatMap(
                    lambda o: [(k, (steps.rank(o.text, o.id), o.id))
                               for k in steps.line_keys(o.text, config)])
                 | "Group lines" >> beam.GroupByKey() | "Line drops" >> beam.FlatMap(_line_drops))
        return ({"doc": _by_id(live, "Docs for lines"), "drop": drops}
                | "Join drops" >> beam.CoGroupByKey()
                | "Drop lines" >> beam.Map(_apply_drops, config))

    @staticmethod
    def _near_dedup(live, config: near_dedup.NearDedup):
        duplicate_of = (live | "Buckets" >> beam.FlatMap(_near_members, config)
                        | "Group buckets" >> beam.GroupByKey()
                        | "Pairs" >> beam.FlatMap(
                            lambda kv, c: near_dedup.smaller_duplicates(list(kv[1]), c), config)
                        | "Smallest" >> beam.CombinePerKey(min))
        return ({"doc": _by_id(live, "Docs for near"), "dup": duplicate_of}
                | "Join near" >> beam.CoGroupByKey() | "Mark near" >> beam.Map(_mark_near))

    def _report(self, outcomes) -> None:
        config, report_config, path = self._config, self._report_config, self._report_path
        tally = outcomes | "Tally" >> beam.CombineGlobally(_TallyFn())
        exact = _cluster_sizes(outcomes, steps.EXACT_DUPLICATE)
        near = _cluster_sizes(outcomes, steps.NEAR_DUPLICATE)
        grams = (outcomes | "Kept for n-grams" >> beam.Filter(lambda o: o.kept)
                 | "N-grams" >> beam.FlatMap(lambda o: report.ngrams(o.text, report_config.ngram))
                 | "Count n-grams" >> beam.combiners.Count.PerElement()
                 | "Top n-grams" >> beam.CombineGlobally(_TopNgramsFn(report_config.top_ngrams)))

        def write(tally, exact, near, grams):
            data = report.build(tally, config, exact_clusters=report.cluster_histogram(exact),
                                near_clusters=report.cluster_histogram(near),
                                repeated_ngrams=grams, ngram=report_config.ngram)
            paths.atomic_write_text(path, json.dumps(data))

        _ = tally | "Write report" >> beam.Map(
            write, exact=beam.pvalue.AsSingleton(exact), near=beam.pvalue.AsSingleton(near),
            grams=beam.pvalue.AsSingleton(grams))

"""Corpus-cleaning throughput: the single-process cleaner and Beam's DirectRunner on
python_docs, and the cost curve of MinHash near-dedup as the corpus grows 1x, 4x, 16x.

What is measured
  * Corpus: python_docs' train split (Python's help topics and stdlib docstrings, built
    offline under --data_dir), read through `documents.read_shard` as `t5x-lite clean` reads it.
  * Steps: gin_configs/runs/clean.gin's defaults (`CleaningConfig()` with English bad words
    and language ID; C4 and Gopher rules, PII, exact, line and MinHash dedup).
  * "single process": `clean.clean(...)` end to end — read, clean, TFDS array_record write,
    report — in this process. "beam DirectRunner": the same call with runner='DirectRunner'
    (Beam's local runner in its default in-process mode), same output. Each round writes a
    fresh dataset; figures are medians over rounds, interleaved.
  * Stages: the single-process stages timed separately on the same documents (rewrite, exact
    dedup, line dedup, verdict, near dedup) to show where the time goes.
  * MinHash scaling: `local.near_duplicates` (datasketch signatures with MinHash.bulk, one
    MinHashLSH index, a query per document, verification) on the corpus repeated 1x, 4x, 16x,
    each copy made distinct by a per-copy tag word inserted every 8 words (so the copies are
    not near-duplicates of each other and the LSH buckets stay realistic).

Run on a quiet machine: .venv/bin/python experiments/benchmarks/cleaning.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import tempfile
import time

from t5x_lite.data import pipeline
from t5x_lite.data.cleaning import (badwords, clean, documents, language, local, near_dedup,
                                    steps)


def _config() -> steps.CleaningConfig:
    return dataclasses.replace(steps.CleaningConfig(), bad_words=badwords.BadWords(),
                               language=language.LanguageId())


def _documents(data_dir: str) -> list[documents.Document]:
    shards = documents.shards(["tfds:python_docs@train"], data_dir=data_dir)
    return list(itertools.chain.from_iterable(map(documents.read_shard, shards)))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def end_to_end(data_dir: str, rounds: int) -> dict[str, float]:
    seconds = {"single process": [], "beam DirectRunner": []}
    with tempfile.TemporaryDirectory() as out:
        for r in range(rounds):
            for label, runner in (("single process", None), ("beam DirectRunner", "DirectRunner")):
                name = f"bench_{r}_{'beam' if runner else 'local'}"
                seconds[label].append(_timed(lambda: clean.clean(
                    inputs=["tfds:python_docs@train"], output_dataset=name, data_dir=out,
                    input_data_dir=data_dir, config=_config(), runner=runner)))
    return {label: statistics.median(values) for label, values in seconds.items()}


def stages(docs, config: steps.CleaningConfig) -> dict[str, tuple[float, int]]:
    """(seconds, documents that entered) per single-process stage."""
    result = {}
    start = time.perf_counter()
    outcomes = [steps.rewrite(d, config) for d in docs]
    result["rewrite (normalise, PII, line rules)"] = (time.perf_counter() - start, len(docs))
    runs = (("exact dedup", local.exact_dedup),
            ("line dedup", lambda live: local.line_dedup(live, config.line_dedup)),
            ("verdict (language, bad words, quality)",
             lambda live: [steps.verdict(o, config) for o in live]),
            ("near dedup (MinHash LSH)",
             lambda live: local.near_duplicates(live, config.near_dedup)))
    for label, run in runs:
        live = [o for o in outcomes if o.kept]
        result[label] = (_timed(lambda: run(live)), len(live))
    return result


def _distinct_copy(text: str, copy: int) -> str:
    words = text.split()
    for i in range(0, len(words), 8):
        words[i] = f"{words[i]}~{copy}"
    return " ".join(words)


def minhash_scaling(docs, factors=(1, 4, 16)) -> list[tuple[int, int, float]]:
    config = near_dedup.NearDedup()
    rows = []
    for factor in factors:
        outcomes = [steps.Outcome(f"{copy}:{d.id}", _distinct_copy(d.text, copy) if copy else
                                  d.text, 0) for copy in range(factor) for d in docs]
        rows.append((factor, len(outcomes), _timed(
            lambda: local.near_duplicates(outcomes, config))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data_dir", default=pipeline.default_data_dir())
    args = parser.parse_args()
    docs = _documents(args.data_dir)
    n, words = len(docs), sum(len(d.text.split()) for d in docs)
    print(f"python_docs train: {n:,} documents, {words:,} words")
    for label, seconds in end_to_end(args.data_dir, args.rounds).items():
        print(f"{label:>20}: {seconds:6.1f} s  {n / seconds:8.0f} docs/s  "
              f"{words / seconds / 1e3:6.0f}k words/s (median of {args.rounds})")
    print("single-process stages:")
    for label, (seconds, entered) in stages(docs, _config()).items():
        print(f"  {label:<42} {entered:6,} docs in  {seconds:6.2f} s  "
              f"{entered / seconds:8.0f} docs/s")
    print("MinHash near-dedup as the corpus grows:")
    base = None
    for factor, count, seconds in minhash_scaling(docs):
        base = base or seconds
        print(f"  {factor:>2}x  {count:7,} docs  {seconds:7.2f} s  {count / seconds:7.0f} docs/s"
              f"  ({seconds / base:5.1f}x the 1x time)")


if __name__ == "__main__":
    main()

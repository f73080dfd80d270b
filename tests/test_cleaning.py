"""Corpus cleaning end to end: dedup rules, count conservation, idempotence, the TFDS output
`train` reads, the report, and Beam (DirectRunner) = the single-process cleaner."""
import dataclasses
import json
import random
import textwrap

import pytest
from pydoc_data import topics

from t5x_lite import paths
from t5x_lite.data import pipeline
from t5x_lite.data.cleaning import (badwords, clean, language, local, near_dedup, quality,
                                    steps)
from t5x_lite.data.cleaning.documents import Document
from t5x_lite.main import main

BOILERPLATE = "Copyright 2001 Python Software Foundation; All Rights Reserved worldwide."
EMAIL = "Write to jane.doe.4821@fastmail.com or call +44 20 7946 0958 for help."


def _topic_texts(count=40):
    return [topics.topics[name] for name in sorted(topics.topics)[:count]]


def _words(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def _pair_with_jaccard(tag: str, shared: int, total: int = 204, n: int = 5):
    """Two documents of `total` distinct words whose first `shared` words agree: their
    n-gram sets have Jaccard (shared-n+1) / (2(total-n+1) - (shared-n+1))."""
    head = _words(f"{tag}h", shared)
    a = " ".join(head + _words(f"{tag}a", total - shared))
    b = " ".join(head + _words(f"{tag}b", total - shared))
    common, each = shared - n + 1, total - n + 1
    return a, b, common / (2 * each - common)


def _no_filters(**overrides):
    return steps.CleaningConfig(pii=None, quality=None, bad_words=None, language=None,
                                **overrides)


def test_exact_duplicates_keep_the_smallest_id():
    docs = [Document("c", "same text"), Document("a", "same text"), Document("b", "other")]
    outcomes = {o.id: o for o in local.clean(docs, _no_filters(near_dedup=None))}
    assert outcomes["a"].kept and outcomes["b"].kept
    assert outcomes["c"].removed_by == steps.EXACT_DUPLICATE
    assert outcomes["c"].duplicate_of == "a"


@pytest.mark.parametrize("shared, removed", [(200, True), (196, True), (150, False),
                                             (120, False)])
def test_near_duplicates_above_the_threshold_are_removed_below_kept(shared, removed):
    a, b, jaccard = _pair_with_jaccard("w", shared)
    assert (jaccard >= 0.9) == removed and (jaccard <= 0.6) != removed
    docs = [Document("x", a), Document("y", b)]
    outcomes = local.clean(docs, _no_filters(line_dedup=None))
    assert sum(not o.kept for o in outcomes) == int(removed)
    if removed:
        survivor = min(outcomes, key=lambda o: steps.rank(o.text, o.id))
        assert survivor.kept
        loser = next(o for o in outcomes if not o.kept)
        assert loser.removed_by == steps.NEAR_DUPLICATE and loser.duplicate_of == survivor.id


def test_near_dedup_survivors_do_not_depend_on_input_order():
    pairs = [_pair_with_jaccard(f"t{k}", 196) for k in range(6)]
    docs = [Document(f"d{k}{side}", text) for k, (a, b, _) in enumerate(pairs)
            for side, text in (("a", a), ("b", b))]
    kept = []
    for seed in range(3):
        shuffled = list(docs)
        random.Random(seed).shuffle(shuffled)
        kept.append(sorted(o.id for o in local.clean(shuffled, _no_filters()) if o.kept))
    assert kept[0] == kept[1] == kept[2] and len(kept[0]) == 6


def test_near_dedup_index_and_bucket_rule_agree():
    """The in-memory LSH queries and the per-bucket rule (Beam's) find the same duplicates."""
    config = near_dedup.NearDedup()
    texts = [t for a, b, _ in (_pair_with_jaccard(f"q{k}", s) for k, s in
                               enumerate((200, 198, 196, 150, 120))) for t in (a, b)]
    texts += _topic_texts(10)
    items = [(steps.rank(t, str(i)), str(i), s)
             for i, (t, s) in enumerate(zip(texts, near_dedup.signatures(texts, config)))]
    buckets = {}
    for item in items:
        for key in near_dedup.band_keys(item[2], config):
            buckets.setdefault(key, []).append(item)
    by_bucket = {}
    for members in buckets.values():
        for doc_id, smaller in near_dedup.smaller_duplicates(members, config):
            by_bucket[doc_id] = min(by_bucket.get(doc_id, smaller), smaller)
    assert {k: v[1] for k, v in by_bucket.items()} == near_dedup.duplicates(items, config)
    assert len(by_bucket) == 3  # one of each pair with J >= 0.92, none with J <= 0.6


def test_repeated_lines_stay_in_one_document():
    texts = [f"{text}\n{BOILERPLATE}" for text in _topic_texts(5)]
    docs = [Document(str(i), t) for i, t in enumerate(texts)]
    outcomes = local.clean(docs, _no_filters(near_dedup=None))
    holding = [o for o in outcomes if BOILERPLATE in o.text]
    assert len(holding) == 1
    assert holding[0].id == min((steps.rank(t, str(i)) for i, t in enumerate(texts)))[1]
    assert sum(o.lines_removed.get(steps.REPEATED_LINES, 0) for o in outcomes) == 4


def test_normalize_is_idempotent_and_keeps_indentation():
    text = "Caf\u0065\u0301\u00a0 bar  \r\n\n\n\n    indented line\t \n\ufeff"
    once = steps.normalize(text)
    assert once == "Caf\u00e9  bar\n\n    indented line"
    assert steps.normalize(once) == once


def _passing_topics() -> list[str]:
    """Help topics that pass the fixture's document rules: each planted problem below is then
    the only reason its document can be removed."""
    config = quality.QualityConfig(line_rules=())
    texts = [steps.normalize(t) for t in _topic_texts(len(topics.topics))]
    return list(dict.fromkeys(t for t in texts if quality.failed_rule(t, config) is None))


def _corpus_file(tmp_path) -> str:
    """Real documentation text with every kind of problem planted in it."""
    texts = sorted(_passing_topics(), key=len, reverse=True)  # the longest first
    assert len(texts) >= 40
    records = [{"text": t} for t in texts[:31]]
    records += [{"text": texts[1]}, {"text": texts[1]}]  # exact duplicates
    words = texts[0].split()
    words[5], words[500] = "alpha", "omega"  # a near-duplicate, re-wrapped: no line in common
    records += [{"text": textwrap.fill(" ".join(words), width=50)}]
    records += [{"text": f"{texts[31]}\n{EMAIL}"}]
    records += [{"text": f"{t}\n{BOILERPLATE}"} for t in texts[32:36]]
    records += [{"text": texts[36] + "\nWhat a load of bullshit this whole section is."},
                {"text": texts[37] + "\nThe placeholder text lorem ipsum must be replaced."},
                {"text": "Le chat est sur la table et il dort tout l'après-midi au soleil."},
                {"text": "   \n  "}, {"nottext": "x"}]
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps(r) for r in records] + ["{not json"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _read(name, data_dir, split="train"):
    config = pipeline.DatasetConfig(name=name, split=split, data_dir=data_dir)
    source = config.source()
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    """The corpus cleaned once in this process and once by Beam's DirectRunner."""
    tmp = tmp_path_factory.mktemp("clean")
    corpus, data_dir = _corpus_file(tmp), str(tmp / "tfds")
    # Python's help topics are hard-wrapped: C4's line rules would gut them (quality.py).
    config = dataclasses.replace(steps.CleaningConfig(), quality=quality.QualityConfig(
        line_rules=()), language=language.LanguageId(), bad_words=badwords.BadWords())
    local_report = clean.clean(inputs=[corpus], output_dataset="docs_local",
                               data_dir=data_dir, config=config)
    beam_report = clean.clean(inputs=[corpus], output_dataset="docs_beam", data_dir=data_dir,
                              config=config, runner="DirectRunner")
    return corpus, data_dir, config, local_report, beam_report


def test_every_input_document_is_kept_or_counted_once(cleaned):
    corpus, _, _, report, _ = cleaned
    with open(corpus) as f:
        lines = sum(1 for _ in f)
    docs = report["documents"]
    assert docs["in"] == lines
    assert docs["in"] == docs["out"] + sum(r["documents"] for r in report["removed"].values())
    for reason in ("unreadable", "empty", "exact_duplicate", "repeated_lines"):
        assert reason in report["removed"]
    removed = report["removed"]
    expected = {"unreadable": 2, "empty": 1, "exact_duplicate": 2, "language": 1,
                "bad_words": 1, "c4_lorem_ipsum": 1, "near_duplicate": 1, "repeated_lines": 0}
    assert {reason: removed[reason]["documents"] for reason in expected} == expected
    assert report["lines_removed"]["repeated_lines"] >= 3  # the boilerplate, and real repeats
    assert report["languages"]["fr"] == 1
    assert report["pii"] == {"email": 1, "phone": 1}


def test_output_is_a_tfds_dataset_train_reads_by_name(cleaned):
    _, data_dir, _, report, _ = cleaned
    records = _read("docs_local", data_dir)
    assert len(records) == report["documents"]["out"] > 10
    texts = [r["text"].decode() for r in records]
    assert not any("jane.doe" in t for t in texts) and any("<EMAIL>" in t for t in texts)
    assert sum(BOILERPLATE in t for t in texts) == 1


def test_beam_direct_runner_gives_the_same_dataset_and_report(cleaned):
    _, data_dir, _, local_report, beam_report = cleaned
    assert _read("docs_beam", data_dir) == _read("docs_local", data_dir)
    assert beam_report == local_report


def test_cleaning_the_output_again_removes_nothing(cleaned, tmp_path):
    _, data_dir, config, first, _ = cleaned
    again = clean.clean(inputs=["tfds:docs_local@train"], output_dataset="docs_again",
                        data_dir=data_dir, config=config)
    assert again["documents"]["in"] == again["documents"]["out"] == first["documents"]["out"]
    assert sorted(r["text"] for r in _read("docs_again", data_dir)) == sorted(
        r["text"] for r in _read("docs_local", data_dir))


def test_cleaning_again_with_every_default_step_removes_nothing(cleaned):
    """clean.gin's steps, C4's line rules included, on the planted corpus and then on their
    own output."""
    corpus, data_dir, _, _, _ = cleaned
    config = dataclasses.replace(steps.CleaningConfig(), language=language.LanguageId(),
                                 bad_words=badwords.BadWords())
    first = clean.clean(inputs=[corpus], output_dataset="docs_all", data_dir=data_dir,
                        config=config)
    assert first["lines_removed"]["c4_terminal_punctuation"] > 0
    again = clean.clean(inputs=["tfds:docs_all@train"], output_dataset="docs_all_again",
                        data_dir=data_dir, config=config)
    assert again["documents"]["in"] == again["documents"]["out"] == first["documents"]["out"]
    assert not any(again["lines_removed"].values()) and not again["pii"]


def test_report_files_and_plots_are_written(cleaned):
    _, data_dir, _, report, _ = cleaned
    directory = paths.as_path(data_dir) / "docs_local" / "1.0.0"
    assert json.loads((directory / "report.json").read_text()) == report
    markdown = (directory / "report.md").read_text()
    assert "exact_duplicate" in markdown and "| email | 1 |" in markdown
    for plot in ("duplicate_clusters.png", "document_lengths.png"):
        assert (directory / plot).read_bytes()[:4] == b"\x89PNG"


def test_cli_cleans_with_gin_and_refuses_to_overwrite(cleaned, tmp_path, capsys):
    corpus, _, _, _, _ = cleaned
    data_dir = str(tmp_path / "tfds")
    argv = ["clean", f"--input={corpus}", "--output_dataset=cli_docs", f"--data_dir={data_dir}",
            "--gin_file=runs/clean_dedup_pii.gin"]
    assert main(argv) == 0
    assert "cli_docs: kept" in capsys.readouterr().out
    report = json.loads((tmp_path / "tfds/cli_docs/1.0.0/report.json").read_text())
    assert "gopher_word_count" not in report["removed"]  # quality rules are off in that file
    assert main(argv) == 1
    assert "already holds a dataset" in capsys.readouterr().err
    bad = argv[:-1] + ["--output_dataset=x2", "--gin.cleaning.CleaningConfig.nonsense=1"]
    assert main(bad) == 2

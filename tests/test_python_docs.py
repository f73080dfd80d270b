"""The python_docs corpus builds offline, deterministically, into sane splits."""

import socket
import sys
import textwrap
import time

import pytest

from t5x_lite.data import python_docs

SPLITS = ("train", "validation")


def _no_network(*args, **kwargs):
    raise AssertionError("python_docs tried to use the network")


def build_offline(data_dir) -> float:
    """Builds python_docs into `data_dir` with sockets disabled; returns seconds taken."""
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(socket.socket, "connect_ex", _no_network)
        patch.setattr(socket, "getaddrinfo", _no_network)
        python_docs.prepare(str(data_dir))
    return time.perf_counter() - start


def read_split(data_dir, split):
    source = python_docs.data_source(split, str(data_dir))
    return source.__getitems__(list(range(len(source))))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    # A directory of its own: the shared `data_dir` may have been built by an earlier test,
    # and this build must happen here, with the network disabled.
    data_dir = tmp_path_factory.mktemp("offline_build")
    build_offline(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def records(corpus_dir):
    return {split: read_split(corpus_dir, split) for split in SPLITS}


def test_records_are_text_and_source_bytes(records):
    for split in SPLITS:
        assert records[split], f"{split} is empty"
        for record in records[split]:
            assert set(record) == {"text", "source"}
            assert isinstance(record["text"], bytes) and isinstance(record["source"], bytes)
            assert record["text"].strip() == record["text"] and record["text"]


def test_sources_are_unique_and_splits_disjoint(records):
    sources = {split: [r["source"].decode() for r in records[split]] for split in SPLITS}
    for split in SPLITS:
        assert len(set(sources[split])) == len(sources[split])
    assert not set(sources["train"]) & set(sources["validation"])
    assert all(python_docs.is_validation(s) for s in sources["validation"])
    assert not any(python_docs.is_validation(s) for s in sources["train"])
    fraction = len(sources["validation"]) / (len(sources["train"]) + len(sources["validation"]))
    assert 0.01 < fraction < 0.06


def test_texts_are_unique(records):
    texts = [r["text"] for split in SPLITS for r in records[split]]
    assert len(set(texts)) == len(texts)


def test_corpus_holds_topics_and_stdlib_docstrings(records):
    by_source = {r["source"].decode(): r["text"].decode() for s in SPLITS for r in records[s]}
    assert "assert statement" in by_source["topic:assert"]
    assert "module:json.decoder.JSONDecoder.decode" in by_source
    assert by_source["module:json"].startswith("JSON (JavaScript Object Notation)")
    assert sum(s.startswith("topic:") for s in by_source) > 50
    assert len(by_source) > 3000
    assert not any("site-packages" in s or ".test." in s or s.startswith("module:test.")
                   for s in by_source)
    assert min(len(t) for t in by_source.values()) >= python_docs.MIN_DOCSTRING_CHARS


def test_texts_are_english(records):
    texts = [r["text"].decode() for r in records["train"]]
    assert sum(" the " in t for t in texts) > 0.5 * len(texts)
    assert sum(t.startswith("Return") for t in texts) > 100
    assert sum(len(t) for t in texts) > 1_000_000


def test_build_imports_no_stdlib_module(corpus_dir):
    del corpus_dir  # Built in this process.
    assert "antigravity" not in sys.modules
    assert "this" not in sys.modules


def test_two_offline_builds_are_identical(records, tmp_path):
    seconds = build_offline(tmp_path / "again")
    assert seconds < 60
    for split in SPLITS:
        assert read_split(tmp_path / "again", split) == records[split]


def test_split_of_a_source_is_a_fixed_hash():
    # Pinned values: a change here would reshuffle every split.
    assert python_docs.is_validation("module:json") is False
    sources = [f"module:m{i}" for i in range(10_000)]
    assert 250 < sum(map(python_docs.is_validation, sources)) < 350


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_stdlib_documents_skips_tests_and_broken_files(tmp_path):
    _write(tmp_path / "good.py", '''
        """The good module shows what gets extracted."""
        import antigravity_does_not_exist  # Never imported.
        if True:
            class Nested:
                """A class defined inside an if block."""
                def method(self):
                    """Return self, with a long enough docstring."""
                def short(self):
                    """Return self."""
        async def coro():
            """An async function documented at length."""
        ''')
    _write(tmp_path / "pkg" / "__init__.py", '"""Package docstring long enough to keep."""\n')
    _write(tmp_path / "broken.py", '"""Never seen: syntax error follows."""\ndef (:\n')
    for skipped in ("test", "tests", "site-packages/lib", "__pycache__", "idlelib/idle_test"):
        _write(tmp_path / skipped / "mod.py", '"""A docstring in a skipped directory."""\n')

    stats = python_docs.CollectionStats()
    documents = list(python_docs.stdlib_documents(str(tmp_path), stats))

    assert [d.source for d in documents] == [
        "module:good",
        "module:good.Nested",
        "module:good.Nested.method",
        "module:good.coro",
        "module:pkg",
    ]
    assert documents[2].text == "Return self, with a long enough docstring."
    assert stats.files_parsed == 2
    assert [p.rsplit("/", 1)[-1] for p in stats.files_failed] == ["broken.py"]


def test_collect_documents_drops_repeated_texts_and_renames_sources(tmp_path):
    _write(tmp_path / "mod.py", '''
        import sys
        if sys.platform == "win32":
            def where():
                """Windows flavour of a long docstring."""
        else:
            def where():
                """Posix flavour of a long docstring."""
        def copy():
            """Windows flavour of a long docstring."""
        ''')
    topics_only = python_docs.CollectionStats()
    python_docs.collect_documents(str(tmp_path / "empty"), topics_only)
    stats = python_docs.CollectionStats()
    documents = python_docs.collect_documents(str(tmp_path), stats)
    stdlib = [d for d in documents if d.source.startswith("module:")]
    assert [d.source for d in stdlib] == ["module:mod.where", "module:mod.where#2"]
    assert stats.duplicate_texts == topics_only.duplicate_texts + 1
    assert stats.renamed_sources == 1
    assert documents[0].source.startswith("topic:")

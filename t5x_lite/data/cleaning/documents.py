"""Where a corpus to clean comes from: a TFDS split, JSONL files or text files.

An input is cut into *shards* (one per file, or a range of TFDS record indices) so that the
single-process cleaner reads them one after another and the Beam pipeline reads them in
parallel, with the same document ids either way. Ids are stable (file name and line number,
or dataset, split and index): the deterministic choices of the cleaner (which copy of a
duplicate survives) are made on them.

A record that cannot be read (bad JSON, no text field, not UTF-8) is not an error: it comes
out as a document with `text=None` and a `problem`, so the cleaner counts it under the removal
reason "unreadable" and nothing disappears without a count.

    tfds:NAME[:VERSION][@SPLIT]   e.g. tfds:python_docs@train, tfds:c4/en:3.1.0@validation
    PATH_OR_GLOB.jsonl            one JSON object per line; the text is under `text_field`
    PATH_OR_GLOB (anything else)  one document per file (UTF-8 text)
"""
from __future__ import annotations

import dataclasses
import glob
import json
from collections.abc import Iterator, Sequence

from t5x_lite import paths

TFDS_PREFIX = "tfds:"
RECORDS_PER_TFDS_SHARD = 10_000


@dataclasses.dataclass(frozen=True)
class Document:
    """One input record. `text` is None when the record could not be read (`problem` says
    why)."""

    id: str
    text: str | None
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class Shard:
    """A unit of reading: a file, or `[start, stop)` of a TFDS split."""

    kind: str  # "tfds" | "jsonl" | "text"
    location: str  # TFDS name or file path
    split: str = ""
    data_dir: str = ""
    start: int = 0
    stop: int = 0
    text_field: str = "text"


def _tfds_spec(spec: str) -> tuple[str, str]:
    name, _, split = spec[len(TFDS_PREFIX):].partition("@")
    if not name:
        raise ValueError(f"--input={spec!r}: expected tfds:NAME[:VERSION][@SPLIT]")
    return name, split or "train"


def _tfds_source(name: str, split: str, data_dir: str):
    from t5x_lite.data import pipeline  # the one way the project opens a TFDS split

    return pipeline.DatasetConfig(name=name, split=split, data_dir=data_dir or None).source()


def _files(pattern: str) -> list[str]:
    path = paths.as_path(pattern)
    if any(char in pattern for char in "*?["):
        if paths.is_local(path):
            found = sorted(glob.glob(str(path)))
        else:
            found = sorted(str(p) for p in path.parent.glob(path.name))
    else:
        found = [str(path)] if path.exists() else []
    if not found:
        raise FileNotFoundError(f"--input={pattern!r}: no such file")
    return found


def shards(inputs: Sequence[str], *, data_dir: str | None = None,
           text_field: str = "text") -> list[Shard]:
    """The shards of every input, in a fixed order."""
    result = []
    for spec in inputs:
        if spec.startswith(TFDS_PREFIX):
            name, split = _tfds_spec(spec)
            size = len(_tfds_source(name, split, data_dir or ""))
            for start in range(0, size, RECORDS_PER_TFDS_SHARD):
                result.append(Shard("tfds", name, split, data_dir or "", start,
                                    min(size, start + RECORDS_PER_TFDS_SHARD)))
            continue
        for file in _files(spec):
            kind = "jsonl" if file.endswith(".jsonl") else "text"
            result.append(Shard(kind, file, text_field=text_field))
    return result


def _decoded(raw) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def _read_tfds(shard: Shard) -> Iterator[Document]:
    source = _tfds_source(shard.location, shard.split, shard.data_dir)
    for index in range(shard.start, shard.stop):
        doc_id = f"{shard.location}@{shard.split}:{index:09d}"
        try:
            yield Document(doc_id, _decoded(source[index][shard.text_field]))
        except (KeyError, UnicodeDecodeError) as error:
            yield Document(doc_id, None, f"{type(error).__name__}: {error}")


def _read_jsonl(shard: Shard) -> Iterator[Document]:
    with paths.as_path(shard.location).open("rb") as f:
        for number, line in enumerate(f, start=1):
            doc_id = f"{shard.location}:{number:09d}"
            try:
                text = json.loads(line.decode("utf-8"))[shard.text_field]
                if not isinstance(text, str):
                    raise TypeError(f"{shard.text_field!r} is {type(text).__name__}, not text")
                yield Document(doc_id, text)
            except (ValueError, KeyError, TypeError) as error:
                yield Document(doc_id, None, f"{type(error).__name__}: {error}")


def _read_text(shard: Shard) -> Iterator[Document]:
    try:
        yield Document(shard.location, paths.as_path(shard.location).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        yield Document(shard.location, None, f"UnicodeDecodeError: {error}")


def read_shard(shard: Shard) -> Iterator[Document]:
    """The documents of one shard, in order."""
    reader = {"tfds": _read_tfds, "jsonl": _read_jsonl, "text": _read_text}[shard.kind]
    yield from reader(shard)

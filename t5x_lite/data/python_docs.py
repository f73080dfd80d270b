"""`python_docs`: an offline English corpus built from the running Python's own docs.

The default pretraining corpus has to exist on a machine with no network, so it is
made from what every Python install carries: the help-topic texts of
`pydoc_data.topics` and the docstrings of the standard library. Docstrings are read
by parsing the source with `ast`; modules are never imported, since importing some
(`antigravity`, `this`, `idlelib` ...) has side effects.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import logging
import os
import sysconfig
import time
import zlib
from collections.abc import Iterator

import filelock
import tensorflow_datasets as tfds
from etils import epath

from t5x_lite import paths

# Directory names that hold tests, third-party packages or bytecode, not docs.
SKIPPED_DIR_NAMES = frozenset({"site-packages", "test", "tests", "idle_test", "__pycache__"})
# Docstrings shorter than this ("Return self.", "Helper.") carry no useful text.
MIN_DOCSTRING_CHARS = 20
# Percent of documents (by a hash of their source) held out for validation.
VALIDATION_PERCENT = 3

_DOCSTRING_OWNERS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclasses.dataclass(frozen=True)
class Document:
    """One record of the corpus: `source` names where `text` came from and is unique."""

    source: str
    text: str


@dataclasses.dataclass
class CollectionStats:
    """What `collect_documents` saw, for logs and tests."""

    files_parsed: int = 0
    files_failed: list[str] = dataclasses.field(default_factory=list)
    duplicate_texts: int = 0
    renamed_sources: int = 0


def topic_documents() -> Iterator[Document]:
    """Yields the help topics that `help("assert")` etc. show, sorted by topic name."""
    from pydoc_data import topics  # Plain data module: importing it has no side effects.

    for name in sorted(topics.topics):
        yield Document(source=f"topic:{name}", text=topics.topics[name].strip())


def _module_name(stdlib_dir: str, path: str) -> str:
    relative = os.path.relpath(path, stdlib_dir)[: -len(".py")]
    parts = relative.split(os.sep)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _docstrings(node: ast.AST, qualname: str) -> Iterator[tuple[str, str]]:
    """Yields (qualified name, docstring) for classes and functions under `node`.

    Walks every statement, not only direct children, so definitions nested in
    `if`/`try` blocks (platform-specific code) are found too.
    """
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DOCSTRING_OWNERS):
            child_name = f"{qualname}.{child.name}"
            docstring = ast.get_docstring(child, clean=True)
            if docstring:
                yield child_name, docstring
            yield from _docstrings(child, child_name)
        else:
            yield from _docstrings(child, qualname)


def stdlib_source_files(stdlib_dir: str) -> Iterator[str]:
    """Yields the stdlib's `.py` files in sorted order, skipping tests and site-packages."""
    for dirpath, dirnames, filenames in os.walk(stdlib_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIR_NAMES)
        for filename in sorted(filenames):
            if filename.endswith(".py"):
                yield os.path.join(dirpath, filename)


def stdlib_documents(stdlib_dir: str, stats: CollectionStats | None = None) -> Iterator[Document]:
    """Yields module, class, function and method docstrings of the stdlib at `stdlib_dir`.

    Files that cannot be read or parsed are recorded in `stats` and skipped.
    """
    stats = stats if stats is not None else CollectionStats()
    for path in stdlib_source_files(stdlib_dir):
        try:
            with open(path, "rb") as f:
                tree = ast.parse(f.read(), filename=path)
        except (OSError, SyntaxError, ValueError) as e:  # ValueError: null bytes.
            logging.debug("python_docs: skipping %s: %s", path, e)
            stats.files_failed.append(path)
            continue
        stats.files_parsed += 1
        module = _module_name(stdlib_dir, path)
        module_docstring = ast.get_docstring(tree, clean=True)
        named_docstrings = [(module, module_docstring)] if module_docstring else []
        named_docstrings.extend(_docstrings(tree, module))
        for name, docstring in named_docstrings:
            text = docstring.strip()
            if len(text) >= MIN_DOCSTRING_CHARS:
                yield Document(source=f"module:{name}", text=text)


def collect_documents(
    stdlib_dir: str | None = None, stats: CollectionStats | None = None
) -> list[Document]:
    """Returns topics then stdlib docstrings, with repeated texts dropped.

    The first occurrence of a text (in that order) is kept. Sources that repeat
    (e.g. a function defined in both branches of an `if`) get a `#2`, `#3` ... suffix
    so that every source is unique and can be the record key.
    """
    stats = stats if stats is not None else CollectionStats()
    stdlib_dir = stdlib_dir or sysconfig.get_paths()["stdlib"]
    seen_texts: set[str] = set()
    seen_sources: dict[str, int] = {}
    documents = []
    for document in itertools.chain(topic_documents(), stdlib_documents(stdlib_dir, stats)):
        if document.text in seen_texts:
            stats.duplicate_texts += 1
            continue
        seen_texts.add(document.text)
        source = document.source
        count = seen_sources.get(source, 0) + 1
        seen_sources[source] = count
        if count > 1:
            stats.renamed_sources += 1
            source = f"{source}#{count}"  # "#" is in no Python name, so this is new.
        documents.append(Document(source=source, text=document.text))
    return documents


def is_validation(source: str) -> bool:
    """The split of a document depends only on its source, so it is stable across builds."""
    return zlib.crc32(source.encode("utf-8")) % 100 < VALIDATION_PERCENT


class PythonDocs(tfds.core.GeneratorBasedBuilder):
    """Builds `python_docs` from the local Python install; needs no download."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds's own lookup of this file needs `importlib_resources`, which it does not
    # install on Python >= 3.9; the answer is known, so give it.
    code_path = epath.Path(__file__)
    RELEASE_NOTES = {"1.0.0": "Help topics and stdlib docstrings of the running Python."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "English text from the running Python's help topics (pydoc_data.topics) "
                "and its standard library's docstrings, read with ast."
            ),
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "source": tfds.features.Text()}
            ),
            homepage=None,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is local.
        stats = CollectionStats()
        documents = collect_documents(stats=stats)
        logging.info(
            "python_docs: %d documents from %d files (%d unparsable, %d duplicate texts).",
            len(documents),
            stats.files_parsed,
            len(stats.files_failed),
            stats.duplicate_texts,
        )
        train = [d for d in documents if not is_validation(d.source)]
        validation = [d for d in documents if is_validation(d.source)]
        return {
            "train": self._generate_examples(train),
            "validation": self._generate_examples(validation),
        }

    def _generate_examples(self, documents: list[Document]):
        for document in documents:
            yield document.source, {"text": document.text, "source": document.source}


def prepare(data_dir: str) -> None:
    """Builds the dataset under `data_dir` (local, file:// or gs://) as array_record; returns
    at once if built.

    On local disk a file lock makes concurrent processes (test workers, two runs) build it
    once. A lock cannot work on gs://: there process 0 builds it (tfds writes a temporary
    directory and moves it into place) and then writes a marker object, whose upload is
    atomic; the other processes wait for the marker (up to 30 minutes)."""
    tfds.disable_progress_bar()
    directory = paths.as_path(data_dir)
    builder = PythonDocs(data_dir=str(directory), file_format="array_record")
    if paths.is_local(directory):
        directory.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(directory / ".python_docs.lock")):
            builder.download_and_prepare()
        return
    prepare_shared(builder, directory / f".python_docs-{PythonDocs.VERSION}.done")


def prepare_shared(builder, marker, wait_s: float = 1800.0, poll_s: float = 5.0) -> None:
    """Builds a TFDS builder's dataset once on a shared filesystem (gs://), where no lock
    works: process 0 builds and then writes `marker`; the others wait for it. The embedded
    instruction suite builds its configs the same way."""
    import jax  # which process writes shared files

    if marker.exists():
        return
    if jax.process_index() == 0:
        builder.download_and_prepare()
        paths.atomic_write_text(marker, "built by process 0\n")
        return
    deadline = time.monotonic() + wait_s
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker.parent}: process 0 has not built python_docs after "
                               f"{wait_s:.0f} s (no {marker.name})")
        time.sleep(poll_s)


def data_source(split: str, data_dir: str):
    """Random-access records of `split` ({"text": bytes, "source": bytes}), built if needed."""
    prepare(data_dir)
    return tfds.data_source("python_docs", split=split, data_dir=str(paths.as_path(data_dir)))

"""SentencePiece vocabulary with T5's sentinel ids, and deterministic training of one.

Layout follows T5 / seqio's `SentencePieceVocabulary`: the SentencePiece pieces
come first (the ones trained here: pad=0, eos=1, unk=2, no bos; a given model keeps its own
special ids, e.g. LLaMA's unk=0, bos=1, eos=2), then `extra_ids` sentinels counted down from the
top, so `<extra_id_0>` is `vocab_size - 1`. Sentinels are not pieces of the
SentencePiece model; this class maps them to and from text itself. Text right after
a sentinel is a continuation, not a new start: it is encoded and decoded without
SentencePiece's dummy leading space, so "a <extra_id_0> b" round-trips exactly.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

import filelock
import sentencepiece

from t5x_lite import paths

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
DEFAULT_EXTRA_IDS = 100

_MAX_SENTENCES = 300_000
_MAX_SENTENCE_CHARS = 8192

_SENTINEL_PATTERN = re.compile(r"<extra_id_(0|[1-9][0-9]*)>")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def sentinel_name(index: int) -> str:
    return f"<extra_id_{index}>"


class Vocabulary:
    """Encodes text to ids and back; picklable, so grain can ship it to workers."""

    def __init__(self, model_path: str, extra_ids: int = DEFAULT_EXTRA_IDS):
        model_proto = paths.as_path(model_path).read_bytes()  # local, file:// or gs://
        self._setup(model_path, model_proto, extra_ids)

    @classmethod
    def from_serialized(cls, model_proto: bytes, model_path: str,
                        extra_ids: int = DEFAULT_EXTRA_IDS) -> "Vocabulary":
        """A vocabulary from model bytes already in memory, known by `model_path`."""
        vocabulary = cls.__new__(cls)
        vocabulary._setup(model_path, model_proto, extra_ids)
        return vocabulary

    def _setup(self, model_path: str, model_proto: bytes, extra_ids: int) -> None:
        if extra_ids < 0:
            raise ValueError(f"extra_ids must be >= 0, got {extra_ids}")
        self._model_path = model_path
        self._model_proto = model_proto
        self._extra_ids = extra_ids
        self._sp = sentencepiece.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(model_proto)
        # The special ids are the SentencePiece model's own (ours: pad 0, eos 1, unk 2, no
        # bos; LLaMA's: unk 0, bos 1, eos 2, no pad). -1 means the model has none.
        ids = {name: getattr(self._sp, f"{name}_id")() for name in ("pad", "eos", "unk", "bos")}
        self._special = {name: (None if value < 0 else value) for name, value in ids.items()}
        if self._special["eos"] is None:
            raise ValueError(f"{model_path}: the SentencePiece model has no EOS id")
        self._base_size = self._sp.GetPieceSize()
        self._sp_continuation = None  # Built on first use; see `_continuation`.

    def _continuation(self) -> sentencepiece.SentencePieceProcessor:
        """The same model without the dummy prefix, for text that follows a sentinel."""
        if self._sp_continuation is None:
            from sentencepiece import sentencepiece_model_pb2  # Needs protobuf: lazy.

            model = sentencepiece_model_pb2.ModelProto.FromString(self._model_proto)
            model.normalizer_spec.add_dummy_prefix = False
            continuation = sentencepiece.SentencePieceProcessor()
            continuation.LoadFromSerializedProto(model.SerializeToString())
            # Published only once loaded: grain's prefetch threads share this object, and
            # one that saw a half-built processor failed with "Model is not initialized".
            self._sp_continuation = continuation
        return self._sp_continuation

    def __getstate__(self) -> dict:
        return {
            "model_path": self._model_path,
            "model_proto": self._model_proto,
            "extra_ids": self._extra_ids,
        }

    def __setstate__(self, state: dict) -> None:
        self._setup(state["model_path"], state["model_proto"], state["extra_ids"])

    def __repr__(self) -> str:
        return (
            f"Vocabulary({self._model_path!r}, pieces={self._base_size}, "
            f"extra_ids={self._extra_ids})"
        )

    @property
    def model_path(self) -> str:
        return self._model_path

    @property
    def sentencepiece_model(self) -> bytes:
        """The serialized SentencePiece model, e.g. to save next to a checkpoint."""
        return self._model_proto

    @property
    def pad_id(self) -> int | None:
        return self._special["pad"]

    @property
    def eos_id(self) -> int:
        return self._special["eos"]

    @property
    def unk_id(self) -> int | None:
        return self._special["unk"]

    @property
    def bos_id(self) -> int | None:
        """None for our vocabularies: rows start with a shift-right 0 (models/model_format.py)."""
        return self._special["bos"]

    @property
    def extra_ids(self) -> int:
        return self._extra_ids

    @property
    def base_vocab_size(self) -> int:
        """Number of SentencePiece pieces, i.e. the first sentinel-free ids."""
        return self._base_size

    @property
    def vocab_size(self) -> int:
        return self._base_size + self._extra_ids

    def sentinel_id(self, index: int) -> int:
        """Id of `<extra_id_{index}>`; index 0 is the last id, as in T5."""
        if not 0 <= index < self._extra_ids:
            raise ValueError(f"sentinel index {index} not in [0, {self._extra_ids})")
        return self.vocab_size - 1 - index

    def sentinel_index(self, token_id: int) -> int | None:
        """The `i` of `<extra_id_i>` if `token_id` is a sentinel, else None."""
        if self._base_size <= token_id < self.vocab_size:
            return self.vocab_size - 1 - token_id
        return None

    def id_to_piece(self, token_id: int) -> str:
        """The piece `token_id` stands for: SentencePiece's (a word start carries '▁',
        U+2581: what whole-word masking groups by), or `<extra_id_i>` for a sentinel."""
        sentinel = self.sentinel_index(token_id)
        if sentinel is not None:
            return sentinel_name(sentinel)
        if not 0 <= token_id < self._base_size:
            raise ValueError(f"token id {token_id} is not in [0, {self.vocab_size})")
        return self._sp.IdToPiece(token_id)

    def is_special(self, token_id: int) -> bool:
        """Whether `token_id` is not text: a control (pad, eos, bos), unknown or unused piece,
        or a sentinel. Such ids never stand in for a random word (masked LM)."""
        if not 0 <= token_id < self._base_size:
            return True
        sp = self._sp
        return sp.IsControl(token_id) or sp.IsUnknown(token_id) or sp.IsUnused(token_id)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without EOS. `<extra_id_i>` in the text becomes its sentinel id."""
        if "<extra_id_" not in text:
            return self._sp.EncodeAsIds(text)
        ids: list[int] = []
        start = 0
        processor = self._sp
        for match in _SENTINEL_PATTERN.finditer(text):
            index = int(match.group(1))
            if index >= self._extra_ids:
                continue  # Not a sentinel of this vocabulary: leave it as plain text.
            if match.start() > start:
                ids.extend(processor.EncodeAsIds(text[start : match.start()]))
            ids.append(self.sentinel_id(index))
            start = match.end()
            processor = self._continuation()
        if start < len(text):
            ids.extend(processor.EncodeAsIds(text[start:]))
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text; plain texts go to SentencePiece in one call."""
        if any("<extra_id_" in text for text in texts):
            return [self.encode(text) for text in texts]
        return self._sp.EncodeAsIds(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to the first EOS; pads are skipped, sentinels named.

        Ids outside the vocabulary decode as unknown.
        """
        if hasattr(ids, "tolist"):  # numpy / jax arrays.
            ids = ids.tolist()
        pieces: list[str] = []
        run: list[int] = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == self.eos_id:
                break
            if token_id in (self.pad_id, self.bos_id):
                continue
            sentinel = self.sentinel_index(token_id)
            if sentinel is None:
                in_range = 0 <= token_id < self._base_size
                run.append(token_id if in_range or self.unk_id is None else self.unk_id)
                continue
            if run:
                pieces.append(self._decode_run(run, at_start=not pieces))
                run = []
            pieces.append(sentinel_name(sentinel))
        if run:
            pieces.append(self._decode_run(run, at_start=not pieces))
        return "".join(pieces)

    def _decode_run(self, ids: list[int], at_start: bool) -> str:
        processor = self._sp if at_start else self._continuation()
        return processor.DecodeIds(ids)


def training_sentences(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Splits texts into paragraphs, and paragraphs longer than `max_chars` at lines.

    Paragraphs keep their inner newlines and indentation, so the model learns them.
    """
    for text in texts:
        for paragraph in _PARAGRAPH_BREAK.split(text):
            if not paragraph.strip():
                continue
            if len(paragraph) <= max_chars:
                yield paragraph
                continue
            chunk = ""
            for line in paragraph.splitlines(keepends=True):
                if chunk and len(chunk) + len(line) > max_chars:
                    yield chunk
                    chunk = ""
                while len(line) > max_chars:  # One huge line: cut it.
                    yield line[:max_chars]
                    line = line[max_chars:]
                chunk += line
            if chunk.strip():
                yield chunk


def _evenly_spaced(items: list[str], limit: int) -> list[str]:
    """At most `limit` items spread over the whole list; the same every time."""
    if len(items) <= limit:
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def train_vocabulary(
    texts: Iterable[str],
    model_path: str,
    vocab_size: int = 8192,
    *,
    max_sentences: int = _MAX_SENTENCES,
    max_sentence_chars: int = _MAX_SENTENCE_CHARS,
) -> str:
    """Trains a unigram SentencePiece model on `texts` and writes it to `model_path`.

    The same texts give a byte-identical file: one thread, no shuffling, and an
    evenly spaced (not random) sample when there are more than `max_sentences`
    paragraphs. Normalization is "identity" with whitespace kept, so that
    `decode(encode(text)) == text` for any text (code and its indentation included);
    NFKC would rewrite characters such as ligatures and full-width forms.
    Characters outside the 99.95% coverage fall back to UTF-8 byte pieces.
    The file appears atomically (paths.atomic_write_bytes: renamed into place on local disk,
    one upload on gs://). Returns `model_path`.
    """
    model = _train_model(texts, vocab_size, max_sentences=max_sentences,
                         max_sentence_chars=max_sentence_chars)
    paths.atomic_write_bytes(model_path, model)
    return model_path


def _train_model(texts: Iterable[str], vocab_size: int, *, max_sentences: int,
                 max_sentence_chars: int) -> bytes:
    """The serialized SentencePiece model `train_vocabulary` writes."""
    sentences = _evenly_spaced(
        list(training_sentences(texts, max_sentence_chars)), max_sentences
    )
    if not sentences:
        raise ValueError("train_vocabulary: no text to train on")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        byte_fallback=True,
        character_coverage=0.9995,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        max_sentence_length=4 * max_sentence_chars,  # Counted in UTF-8 bytes.
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=1,
    )
    return model.getvalue()


def python_docs_train_texts(data_dir: str) -> Iterator[str]:
    """Texts of the `python_docs` train split under `data_dir` (built if needed)."""
    from t5x_lite.data import python_docs  # Lazy: loading a vocabulary needs no tfds.

    source = python_docs.data_source("train", data_dir)
    batch = 1024
    for start in range(0, len(source), batch):
        indices = list(range(start, min(start + batch, len(source))))
        for record in source.__getitems__(indices):
            yield record["text"].decode("utf-8")


def cached_vocabulary_path(data_dir: str, vocab_size: int) -> str:
    return str(paths.as_path(data_dir) / "vocab" / f"python_docs_sp{vocab_size}.model")


def get_or_train_vocabulary(
    data_dir: str,
    *,
    vocab_size: int = 8192,
    extra_ids: int = DEFAULT_EXTRA_IDS,
    sentencepiece_model: str | None = None,
    texts_fn: Callable[[], Iterable[str]] | None = None,
) -> Vocabulary:
    """The vocabulary to use: a given model, else the cached one, else a new one.

    `vocab_size` counts SentencePiece pieces; the result has `vocab_size + extra_ids`
    ids. A trained model is cached as `{data_dir}/vocab/python_docs_sp{vocab_size}.model`,
    keyed by size only: a `texts_fn` over other texts should use another `data_dir`.

    Concurrent runs train it once: on local disk under a file lock. A lock cannot work on
    gs://, so there every process that finds no cached model trains it (training is
    deterministic: the same bytes everywhere) and only process 0 writes it, in one atomic
    upload; the others use their own identical copy.
    """
    if sentencepiece_model is not None:
        if not paths.as_path(sentencepiece_model).is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {sentencepiece_model}")
        return Vocabulary(sentencepiece_model, extra_ids)
    model_path = cached_vocabulary_path(data_dir, vocab_size)

    def texts() -> Iterable[str]:
        return texts_fn() if texts_fn is not None else python_docs_train_texts(data_dir)

    if paths.is_local(model_path):
        paths.ensure_dir(paths.as_path(model_path).parent)
        with filelock.FileLock(model_path + ".lock"):
            if not paths.as_path(model_path).is_file():
                train_vocabulary(texts(), model_path, vocab_size)
        return Vocabulary(model_path, extra_ids)
    if paths.as_path(model_path).is_file():
        return Vocabulary(model_path, extra_ids)
    model = _train_model(texts(), vocab_size, max_sentences=_MAX_SENTENCES,
                         max_sentence_chars=_MAX_SENTENCE_CHARS)
    import jax  # only process 0 writes shared files

    if jax.process_index() == 0:
        paths.atomic_write_bytes(model_path, model)
    return Vocabulary.from_serialized(model, model_path, extra_ids)

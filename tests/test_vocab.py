"""Vocabulary: T5 id layout, exact round trips, deterministic training, pickling."""

import os
import pickle
import shutil

import numpy as np
import pytest

from t5x_lite.data import python_docs
from t5x_lite.data import vocab as vocab_lib

# The default size: the real setting, and the fastest to train (smaller unigram
# vocabularies take more pruning rounds: 1000 pieces take ~3x as long here).
PIECES = 8192
UNICODE_TEXT = "ünïcødé ☃ 漢字 — naïve café"


@pytest.fixture(scope="session")
def vocab(data_dir):
    """Trained by the default path: the python_docs train split, cached in data_dir."""
    return vocab_lib.get_or_train_vocabulary(data_dir)


@pytest.fixture(scope="session")
def validation_texts(data_dir):
    source = python_docs.data_source("validation", data_dir)
    return [r["text"].decode() for r in source.__getitems__(list(range(len(source))))]


def test_special_ids_and_sizes(vocab):
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.base_vocab_size == PIECES
    assert vocab.vocab_size == PIECES + 100
    assert vocab.model_path.endswith(f"vocab/python_docs_sp{PIECES}.model")


def test_sentinels_count_down_from_the_last_id(vocab):
    assert vocab.sentinel_id(0) == vocab.vocab_size - 1
    assert vocab.sentinel_id(7) == vocab.vocab_size - 8
    assert vocab.sentinel_id(99) == PIECES
    assert vocab.sentinel_index(vocab.vocab_size - 1) == 0
    assert vocab.sentinel_index(PIECES - 1) is None
    for bad in (-1, 100):
        with pytest.raises(ValueError):
            vocab.sentinel_id(bad)


def test_round_trip_on_held_out_docs(vocab, validation_texts):
    assert len(validation_texts) > 100
    for text in validation_texts:
        ids = vocab.encode(text)
        assert vocab.unk_id not in ids
        assert max(ids) < PIECES  # Plain text never yields a sentinel.
        assert vocab.decode(ids) == text
    # Sanity of the trained model: far fewer ids than characters.
    sample = "\n\n".join(validation_texts)
    assert len(vocab.encode(sample)) < len(sample) / 3.5


def test_round_trip_keeps_whitespace_and_unicode(vocab):
    for text in (UNICODE_TEXT, "  indented\n\tand tabbed  \n", "def f(x):\n    return x  # 123"):
        ids = vocab.encode(text)
        assert vocab.unk_id not in ids
        assert vocab.decode(ids) == text
    snowman_ids = vocab.encode("☃")
    assert len(snowman_ids) >= 3  # Unseen character: one piece per UTF-8 byte.


def test_encode_batch_matches_encode(vocab, validation_texts):
    texts = validation_texts[:50] + ["a <extra_id_1> b"]
    assert vocab.encode_batch(texts) == [vocab.encode(t) for t in texts]


def test_decode_stops_at_eos_and_skips_pad(vocab):
    hello, world = vocab.encode("Hello"), vocab.encode("world")
    assert vocab.decode([0, *hello, 0, 0]) == "Hello"
    assert vocab.decode(hello + [vocab.eos_id] + world) == "Hello"
    assert vocab.decode([vocab.eos_id] + world) == ""
    assert vocab.decode(np.array(hello + [1] + world, dtype=np.int32)) == "Hello"


def test_sentinels_decode_by_name(vocab):
    the_cat = vocab.encode("the cat sat")
    ids = [vocab.sentinel_id(0), *the_cat[:1], vocab.sentinel_id(1), *the_cat[1:], 1]
    # Text after a sentinel continues the sentence: its leading space is kept.
    assert vocab.decode(ids) == "<extra_id_0> the<extra_id_1> cat sat"
    assert vocab.encode(vocab.decode(ids)) == ids[:-1]


def test_sentinel_text_encodes_to_sentinel_ids(vocab):
    text = "Fill <extra_id_0> blank<extra_id_1>\n  x <extra_id_100>"
    ids = vocab.encode(text)
    assert [i for i in ids if i >= PIECES] == [vocab.sentinel_id(0), vocab.sentinel_id(1)]
    assert vocab.decode(ids) == text  # <extra_id_100> is not a sentinel here: plain text.


def test_pickle_carries_the_model(vocab, tmp_path):
    path = shutil.copy(vocab.model_path, tmp_path / "copy.model")
    original = vocab_lib.Vocabulary(str(path), extra_ids=10)
    payload = pickle.dumps(original)
    os.remove(path)  # The unpickled copy must not need the file.
    restored = pickle.loads(payload)
    assert restored.model_path == str(path)
    assert restored.vocab_size == PIECES + 10
    text = "Return the <extra_id_3> of x. " + UNICODE_TEXT
    assert restored.encode(text) == original.encode(text)
    assert restored.decode(original.encode(text)) == text


def test_training_is_deterministic_and_atomic(data_dir, tmp_path):
    texts = list(vocab_lib.python_docs_train_texts(data_dir))[:1500]
    first = vocab_lib.train_vocabulary(texts, str(tmp_path / "a" / "sp.model"), vocab_size=500)
    second = vocab_lib.train_vocabulary(texts, str(tmp_path / "b" / "sp.model"), vocab_size=500)
    with open(first, "rb") as f1, open(second, "rb") as f2:
        assert f1.read() == f2.read()
    assert os.listdir(tmp_path / "a") == ["sp.model"]  # No temp file left behind.
    assert vocab_lib.Vocabulary(first).base_vocab_size == 500


def test_training_sentences_split_long_paragraphs():
    text = "para one\nline two\n\n  \n" + "x" * 25 + "\n" + "short\n"
    sentences = list(vocab_lib.training_sentences([text], max_chars=20))
    assert sentences == ["para one\nline two", "x" * 20, "xxxxx\nshort\n"]


def test_get_or_train_uses_cache_then_texts_fn(vocab, data_dir, tmp_path):
    again = vocab_lib.get_or_train_vocabulary(data_dir, vocab_size=PIECES)
    assert again.sentencepiece_model == vocab.sentencepiece_model

    calls = []

    def texts_fn():
        calls.append(1)
        return list(vocab_lib.python_docs_train_texts(data_dir))[:1000]

    fresh_dir = str(tmp_path / "fresh")
    trained = vocab_lib.get_or_train_vocabulary(fresh_dir, vocab_size=400, texts_fn=texts_fn)
    cached = vocab_lib.get_or_train_vocabulary(fresh_dir, vocab_size=400, texts_fn=texts_fn)
    assert calls == [1]
    expected_path = vocab_lib.cached_vocabulary_path(fresh_dir, 400)
    assert trained.model_path == cached.model_path == expected_path
    assert trained.vocab_size == cached.vocab_size == 500


def test_explicit_model_is_loaded_or_named_when_missing(vocab, tmp_path):
    given = vocab_lib.get_or_train_vocabulary(
        str(tmp_path), sentencepiece_model=vocab.model_path, extra_ids=0
    )
    assert given.vocab_size == PIECES
    missing = str(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match="nope.model"):
        vocab_lib.get_or_train_vocabulary(str(tmp_path), sentencepiece_model=missing)
    assert not os.path.exists(tmp_path / "vocab")  # Nothing trained instead.


def test_threads_share_a_fresh_vocabulary(vocab):
    """grain's prefetch threads encode with one Vocabulary; its lazily built processor for text
    after a sentinel must never be seen half-built (CI once failed: "Model is not initialized")."""
    import threading

    text = "Return the <extra_id_0> of x <extra_id_1> and y."
    expected = vocab.encode(text)
    failures = []
    for _ in range(20):
        fresh = vocab_lib.Vocabulary.from_serialized(vocab.sentencepiece_model, vocab.model_path)
        start = threading.Barrier(8)

        def encode(fresh=fresh, start=start):
            start.wait()
            try:
                if fresh.encode(text) != expected:
                    failures.append("different ids")
            except RuntimeError as error:
                failures.append(str(error))

        threads = [threading.Thread(target=encode) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not failures, failures[:3]

"""Sentence embeddings (t5x_lite/embeddings.py) and `t5x-lite embed`.

What the retrieval test shows, and what it does not: the in-process tests use a randomly
initialised model of bert_tiny's size (a few CLI training steps would not change that: the
model a CPU test can afford to train is no better than random at similarity). Mean-pooled
states of a random encoder still carry which tokens a text holds, so a paraphrase that
shares most words (words reordered, one or two swapped) is the nearest of a handful of
unrelated sentences. That checks the pipeline end to end (rows, padding, pooling,
normalisation, search); it says nothing about semantic quality, which needs trained weights.
"""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import embeddings, partitioning
from t5x_lite.errors import InputError
from t5x_lite.models import decoder, encoder, model_format
from t5x_lite.models import encoder_decoder as ed

# Python-doc sentences, each reworded (order changed, a word or two swapped) in QUERIES.
INDEX = [
    "Return the count of items in a container.",
    "Open a file and give back a corresponding file object.",
    "The json module decodes and encodes JSON documents.",
    "If the key is not found in the dictionary, raise an exception.",
    "Using only comparisons between items, sort the list in place.",
    "Make a new thread that runs the target function.",
    "Convert an integer number to a binary string with the prefix 0b.",
    "Strip all whitespace from the start and end of the string.",
]
QUERIES = [
    "Return the number of items in a container.",
    "Open file and return a corresponding file object.",
    "The json module encodes and decodes JSON documents.",
    "Raise an exception if the key is not found in the dictionary.",
    "Sort the list in place using only comparisons between items.",
    "Create a new thread that runs the target function.",
    "Convert an integer number to a binary string prefixed with 0b.",
    "Remove all whitespace from the start and end of the string.",
]


def _init(module, **features):
    return nn.unbox(jax.jit(module.init)(jax.random.key(0), **features)["params"])


@pytest.fixture(scope="module")
def bert_tiny():
    """gin_configs/models/bert_tiny.gin's sizes (EncoderConfig's defaults), random weights."""
    module = encoder.EncoderLM(encoder.EncoderConfig(
        embed_dim=256, num_layers=4, num_heads=4, head_dim=64, mlp_dim=1024,
        format=model_format.ModelFormat(mask_id=8291)))
    return module, _init(module, encoder_input_tokens=jnp.zeros((1, 8), jnp.int32))


def _small(architecture):
    tokens = jnp.zeros((1, 8), jnp.int32)
    if architecture == "decoder":
        module = decoder.DecoderLM(decoder.DecoderConfig(
            embed_dim=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64))
        return module, _init(module, decoder_input_tokens=tokens)
    module = ed.EncoderDecoder(ed.EncoderDecoderConfig(
        vocab_size=8320, embed_dim=32, num_encoder_layers=2, num_decoder_layers=1,
        num_heads=2, head_dim=16, mlp_dim=64))
    return module, _init(module, encoder_input_tokens=tokens, decoder_input_tokens=tokens)


def _check_unit_and_padding_invariant(module, params, vocabulary, mesh=None):
    short = "Return the value."
    longer = [INDEX[1] + " " + INDEX[2], INDEX[3] + " " + INDEX[4], INDEX[6]]
    alone = embeddings.embed_texts(module, params, vocabulary, [short], batch_size=1)
    # One batch whose longest row puts `short` in a 32-position bucket, behind longer texts.
    batch = embeddings.embed_texts(module, params, vocabulary, longer + [short], batch_size=4,
                                   mesh=mesh)
    assert alone.dtype == np.float32 and batch.shape == (4, alone.shape[1])
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batch[3], alone[0], atol=1e-5)


def test_encoder_embeddings_are_unit_norm_and_padding_invariant(bert_tiny, vocabulary):
    # On an 8-device mesh the batch of 4 is rounded up to 8 rows (4 dummies, dropped).
    _check_unit_and_padding_invariant(*bert_tiny, vocabulary,
                                      mesh=partitioning.make_mesh((-1, 1, 1)))


@pytest.mark.parametrize("architecture", ["decoder", "encoder_decoder"])
def test_other_architectures_embed_the_same_way(architecture, vocabulary):
    _check_unit_and_padding_invariant(*_small(architecture), vocabulary)


def test_rows_truncate_keep_eos_and_respect_the_position_table(bert_tiny, data_dir):
    module, _ = bert_tiny
    fmt = model_format.of(module)
    assert embeddings.text_row(module, fmt, [5, 6, 7, 8], 3) == ([5, 6, fmt.eos_id], True)
    assert embeddings.text_row(module, fmt, [5], 3) == ([5, fmt.eos_id], False)
    with pytest.raises(InputError, match=r"max_length=513 exceeds .* \(512 positions\)"):
        embeddings.check_settings(module, 513, 8)
    texts, ids = embeddings.read_texts(input_path="tfds:python_docs@validation",
                                       data_dir=data_dir, max_texts=3)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    assert ids == [f"python_docs@validation:{i}" for i in range(3)]


def test_search_finds_an_indexed_text_and_breaks_ties_by_index(bert_tiny, vocabulary):
    module, params = bert_tiny
    index = embeddings.embed_texts(module, params, vocabulary, INDEX, batch_size=4)
    found, scores = embeddings.search(index, index[[3, 6]], k=3)
    assert found[:, 0].tolist() == [3, 6] and found.shape == (2, 3)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    # Exact ties, also across the k-th place: the lower index wins.
    vectors = np.asarray([[1, 0], [0, 1], [1, 0], [1, 0], [1, 1]], np.float32)
    found, scores = embeddings.search(vectors, np.asarray([[2.0, 0.0]]), k=2)
    assert found.tolist() == [[0, 2]] and scores.tolist() == [[1.0, 1.0]]
    found, _ = embeddings.search(vectors, np.asarray([[1.0, 0.0]]), k=10)  # k > n: all rows
    assert found.tolist() == [[0, 2, 3, 4, 1]]
    with pytest.raises(InputError, match="k must be a positive integer"):
        embeddings.search(vectors, vectors, k=0)


def test_random_bert_tiny_retrieves_each_paraphrase_first(bert_tiny, vocabulary):
    """See the module docstring: shared words, not meaning, is what this demonstrates."""
    module, params = bert_tiny
    vectors = embeddings.embed_texts(module, params, vocabulary, INDEX + QUERIES, batch_size=8)
    found, _ = embeddings.search(vectors[: len(INDEX)], vectors[len(INDEX):], k=1)
    assert found[:, 0].tolist() == list(range(len(QUERIES)))


# ------------------------------------------------------------------------------ CLI
def cli(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "t5x_lite.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, vocabulary):
    """A narrow BERT trained for 2 steps by `t5x-lite train` (quickstart/bert_mlm.gin)."""
    root = tmp_path_factory.mktemp("embed_cli")
    (root / "tiny.gin").write_text("\n".join([
        "include 'quickstart/bert_mlm.gin'",
        "encoder.EncoderConfig.embed_dim = 32", "encoder.EncoderConfig.num_layers = 1",
        "encoder.EncoderConfig.num_heads = 2", "encoder.EncoderConfig.head_dim = 16",
        "encoder.EncoderConfig.mlp_dim = 64",
        f"DATA_DIR = '{data_dir}'", f"MODEL_DIR = '{root / 'run'}'",
        "TRAIN_STEPS = 2", "BATCH_SIZE = 2", "SEQUENCE_LENGTH = 32", "EVAL_DATA = None",
    ]))
    result = cli("train", "--gin_file=tiny.gin", cwd=root)
    assert result.returncode == 0, result.stderr
    with open(root / "texts.jsonl", "w") as f:
        for number, text in enumerate(INDEX):
            f.write(json.dumps({"text": text, "id": f"doc{number}"}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        f.write(json.dumps({"text": INDEX[5]}) + "\n" + json.dumps({"text": QUERIES[0]}) + "\n")
    return root


def test_embed_writes_vectors_sidecar_and_neighbours(trained):
    result = cli("embed", "--gin_file=tiny.gin", "--input=texts.jsonl", "--output=emb.npy",
                 "--queries=queries.jsonl", "--neighbours=nn.jsonl", "--k=3", cwd=trained)
    assert result.returncode == 0, result.stderr
    assert "wrote 8 embeddings (dim 32)" in result.stdout
    vectors = np.load(trained / "emb.npy")
    assert vectors.shape == (8, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    rows = [json.loads(line) for line in (trained / "emb.jsonl").read_text().splitlines()]
    assert rows[2] == {"index": 2, "text": INDEX[2], "id": "doc2"}
    neighbours = [json.loads(line) for line in (trained / "nn.jsonl").read_text().splitlines()]
    assert [n["query"] for n in neighbours] == [INDEX[5], QUERIES[0]]
    best = neighbours[0]["neighbours"]
    assert len(best) == 3 and best[0]["index"] == 5 and best[0]["id"] == "doc5"
    assert best[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert best[0]["score"] >= best[1]["score"] >= best[2]["score"]
    assert float(vectors[5] @ vectors[best[1]["index"]]) == pytest.approx(best[1]["score"],
                                                                         abs=1e-5)


def test_embed_bad_binding_is_one_line_and_exit_2(trained):
    result = cli("embed", "--gin_file=tiny.gin", "--input=texts.jsonl", "--output=never.npy",
                 "--gin.embeddings.run.max_length=600", cwd=trained)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "max_length=600 exceeds the model's learned position table" \
        in lines[0], lines
    assert not (trained / "never.npy").exists() and not (trained / "never.jsonl").exists()

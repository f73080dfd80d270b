"""Extractable memorization (Carlini et al. 2023): exact duplicate counts, a stratified sampler,
a model made to memorise canaries extracts them and an untrained one does not, and the
`t5x-lite memorization` command writes its three files."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import checkpoints, memorization, optimizers, partitioning
from t5x_lite.data import feature_converters, objectives, pipeline
from t5x_lite.models import decoder, model_format
from t5x_lite.trainer import Trainer

K, N = 8, 8  # prompt and continuation lengths (the paper's are 50 and 50)
# The same model as the gin lines below (decoder_tiny.gin with these overrides).
CONFIG = decoder.DecoderConfig(vocab_size=8320, embed_dim=32, num_layers=1, num_heads=2,
                               num_kv_heads=2, head_dim=16, mlp_dim=64)
GIN = ["include 'models/decoder_tiny.gin'", "include 'data/python_docs.gin'",
       "include 'runs/pretrain_decoder.gin'", "decoder.DecoderConfig.embed_dim = 32",
       "decoder.DecoderConfig.num_layers = 1", "decoder.DecoderConfig.num_heads = 2",
       "decoder.DecoderConfig.head_dim = 16", "decoder.DecoderConfig.mlp_dim = 64",
       "SEQUENCE_LENGTH = 64"]
CANARIES = ["The quick brown fox jumps over the lazy dog while the parser reads a file.",
            "Return a new dictionary whose keys are sorted by the length of their values, "
            "longest first.",
            "Seventeen purple elephants compiled the kernel before breakfast yesterday.",
            "A socket that times out raises an error naming the host and the port number."]


def brute_force_counts(rows, windows):
    length = windows.shape[1]
    return [sum(np.array_equal(row[i:i + length], w) for row in rows
                for i in range(len(row) - length + 1)) for w in windows]


def planted_rows(seed, vocab=6):
    """Random rows over a small vocabulary (many natural repeats) plus a planted sequence."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, vocab, size=rng.integers(0, 30)) for _ in range(40)]
    planted = rng.integers(0, vocab, size=12)
    for _ in range(5):
        row = rng.integers(0, vocab, size=30)
        start = rng.integers(0, 18)
        row[start:start + 12] = planted
        rows.append(row)
    return rows


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bases", [memorization._BASES, (1, 1)], ids=["hashes", "colliding"])
def test_duplicate_counts_equal_brute_force(seed, bases, monkeypatch):
    # Bases of 1 hash a window to the sum of its tokens: collisions everywhere, which the
    # token-by-token confirmation must not count.
    monkeypatch.setattr(memorization, "_BASES", bases)
    rows = planted_rows(seed)
    rng = np.random.default_rng(seed + 100)
    for length in (1, 3, 6):
        present = memorization.sample_windows(rows, length, 20, seed)
        absent = rng.integers(0, 6, size=(5, length))
        windows = np.concatenate([present, absent])
        counts = memorization.duplicate_counts(rows, windows)
        assert list(counts) == brute_force_counts(rows, windows)
        assert (counts[:len(present)] >= 1).all()


def test_sampler_is_deterministic_and_covers_duplicate_buckets():
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 10**6, size=30) for _ in range(50)]  # unique windows
    planted = {copies: rng.integers(0, 10**6, size=10) for copies in (2, 4, 8, 16)}
    rows += [p for copies, p in planted.items() for _ in range(copies)]
    first = memorization.sample_windows(rows, 10, 10, seed=0)
    assert np.array_equal(first, memorization.sample_windows(rows, 10, 10, seed=0))
    assert not np.array_equal(first, memorization.sample_windows(rows, 10, 10, seed=1))
    counts = memorization.duplicate_counts(rows, first)
    assert len(first) == 10 and len({tuple(w) for w in first}) == 10  # distinct windows
    assert sorted(set(counts)) == [1, 2, 4, 8, 16]  # every bucket, though 1 dominates the data


def test_training_rows_are_cut_as_the_pipeline_cuts_them():
    docs = [np.arange(2, 9), np.arange(20, 22)]
    rows = memorization.training_rows(docs, eos_id=1, raw_length=3)
    assert [r.tolist() for r in rows] == [[2, 3, 4, 1], [5, 6, 7, 1], [8, 1], [20, 21, 1]]
    # Concatenated after a shuffle: chunk edges move, so documents (no EOS) are the rows.
    joined = memorization.training_rows(docs, eos_id=1, raw_length=2, concatenate=True)
    assert [r.tolist() for r in joined] == [list(range(2, 9)), [20, 21]]
    whole = memorization.training_rows(docs, eos_id=1)
    assert [r.tolist() for r in whole] == [list(range(2, 9)) + [1], [20, 21, 1]]


def memorise(module, rows, steps=200):
    """Trains `module` on `rows` (each read as training reads a document: start, ids, EOS)."""
    fmt = model_format.of(module)
    targets = np.asarray(rows, np.int32)
    segments = np.ones_like(targets)
    batch = {"decoder_input_tokens": objectives.autoregressive_inputs(
                 targets, segments, fmt.start_id).astype(np.int32),
             "decoder_target_tokens": targets, "decoder_segment_ids": segments,
             "decoder_positions": np.broadcast_to(np.arange(targets.shape[1], dtype=np.int32),
                                                  targets.shape).copy(),
             "decoder_loss_weights": np.ones(targets.shape, np.float32)}
    mesh = partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    schedule = optimizers.constant(1e-2)
    trainer = Trainer(module, optimizers.adamw(schedule, weight_decay=0.0), schedule, mesh,
                      partitioning.DEFAULT_RULES,
                      batch_shapes=feature_converters.batch_shapes(
                          fmt, {"targets": targets.shape[1]}, len(targets)))
    state = trainer.create_state(0)
    placed = pipeline.global_batch(batch, trainer.batch_sharding)
    for _ in range(steps):
        state, metrics = trainer.train_step(state, placed)
    # Every token but the rows' first (which [start] alone cannot tell apart) is learned.
    assert float(metrics["accuracy"]) >= 1 - (len(targets) - 1) / targets.size - 1e-6
    return jax.device_get(state.params)


@pytest.fixture(scope="module")
def memorised(tmp_path_factory, data_dir, vocabulary):
    """A tiny decoder trained on the canaries' first K + N tokens, saved as MODEL_DIR/params,
    and the gin file that describes it (the python_docs train split as TRAIN_DATA)."""
    root = tmp_path_factory.mktemp("memorization")
    (root / "mem.gin").write_text("\n".join(GIN + [f"DATA_DIR = '{data_dir}'",
                                                   f"MODEL_DIR = '{root / 'run'}'"]) + "\n")
    module = decoder.DecoderLM(CONFIG)
    windows = np.asarray([vocabulary.encode(text)[:K + N] for text in CANARIES])
    assert windows.shape == (len(CANARIES), K + N)
    params = memorise(module, np.concatenate(
        [windows, np.full((len(windows), 1), vocabulary.eos_id)], axis=1))
    checkpoints.save_params(str(root / "run" / "params"), params)
    return root, module, params, windows


def test_memorised_canaries_are_extracted_and_an_untrained_model_extracts_nothing(memorised):
    _, module, params, windows = memorised
    exact, fraction = memorization.extraction(module, params, windows, K, N, batch_size=3)
    assert exact.tolist() == [True] * len(windows) and fraction.tolist() == [1.0] * len(windows)
    untrained = nn.unbox(module.init(jax.random.key(1), jnp.ones((1, 8), jnp.int32))["params"])
    exact, fraction = memorization.extraction(module, untrained, windows, K, N, batch_size=3)
    assert not exact.any() and fraction.max() < 0.5


def cli(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "t5x_lite.main", "memorization", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cli_writes_json_markdown_and_plot(memorised):
    root = memorised[0]
    lines = [json.dumps({"text": text}) for text in CANARIES + ["too short"]]
    (root / "canaries.jsonl").write_text("\n".join(lines) + "\n")
    result = cli("--gin_file=mem.gin", "--sequences=canaries.jsonl",
                 "--gin.memorization.run.prompt_lengths=(4, 8)",
                 f"--gin.memorization.run.continuation_length={N}",
                 "--gin.memorization.run.num_samples=6",
                 "--gin.memorization.run.max_documents=400", cwd=root)
    assert result.returncode == 0, result.stderr
    out = root / "run" / "memorization"
    saved = json.loads((out / "memorization.json").read_text())
    summary, records = saved["summary"], saved["records"]
    assert [e["k"] for e in summary["by_k"]] == [4, 8]
    assert summary["canaries_too_short"] == 1 and summary["data"]["short_rows"] > 0
    canaries = [r for r in records if r["source"] == "canary" and r["k"] == 8]
    assert len(canaries) == 4 and all(r["exact"] and r["duplicates"] == 0 for r in canaries)
    assert summary["by_k"][1]["canaries"]["exact_rate"] == 1.0
    train = [r for r in records if r["source"] == "train"]
    assert len(train) == 2 * 6 and all(r["duplicates"] >= 1 for r in train)
    table = (out / "memorization.md").read_text()
    assert "## k = 8" in table and "| canaries | 4 | 1.000 | 1.000 |" in table
    assert "and 1 of the canaries" in table and table in result.stdout
    assert (out / "memorization.png").stat().st_size > 1000


@pytest.mark.parametrize("flag", ["--gin.memorization.run.prompt_lenghts=(4,)",
                                  "--gin.memorization.run.continuation_length=0"])
def test_cli_bad_binding_exits_2(memorised, flag):
    root = memorised[0]
    result = cli("--gin_file=mem.gin", flag, cwd=root)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_encoder_decoder_is_refused():
    from t5x_lite.models import encoder_decoder

    t5 = encoder_decoder.EncoderDecoder(encoder_decoder.EncoderDecoderConfig(vocab_size=64))
    with pytest.raises(ValueError, match="encoder-decoder"):
        memorization.extraction(t5, {}, np.zeros((1, 16), np.int64), K, N)

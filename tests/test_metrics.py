"""FLOP accounting and parameter counts checked against hand counts for tiny decoders, and the
metric writers (JSONL, TensorBoard event files, loss plot)."""
import json
import math
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import metrics
from t5x_lite.models.decoder import DecoderConfig, DecoderLM

# A tiny LLaMA-style decoder: V=64, d=16, 2 layers, 4 query heads sharing 2 key/value heads
# of size 8, SwiGLU MLP of width 32.
TINY = dict(vocab_size=64, embed_dim=16, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=8, mlp_dim=32)


def hand_count(vocab_size, embed_dim, num_layers, num_heads, num_kv_heads, head_dim, mlp_dim,
               tie_embeddings=False):
    """Parameters of a bias-free pre-RMSNorm decoder with a gated (two-matrix) MLP."""
    d = embed_dim
    per_layer = (
        2 * d                                   # pre_attention_norm, pre_mlp_norm scales
        + d * num_heads * head_dim              # query
        + 2 * d * num_kv_heads * head_dim       # key, value (grouped-query: fewer heads)
        + num_heads * head_dim * d              # out
        + 2 * d * mlp_dim + mlp_dim * d         # wi_0, wi_1, wo
    )
    counts = {"token_embed": vocab_size * d, "layers": num_layers * per_layer,
              "final_norm": d}
    if not tie_embeddings:
        counts["lm_head"] = d * vocab_size
    counts["total"] = sum(counts.values())
    return counts


def abstract_params(config):
    model = DecoderLM(config)
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    return nn.unbox(jax.eval_shape(lambda t: model.init(jax.random.key(0), t)["params"], tokens))


# -------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_parameter_counts_match_hand_count(tie_embeddings):
    counts = metrics.parameter_counts(DecoderLM(DecoderConfig(**TINY,
                                                              tie_embeddings=tie_embeddings)))
    expected = hand_count(**TINY, tie_embeddings=tie_embeddings)
    assert counts == expected
    # V·d + 2·(2·16 + 512 + 256 + 256 + 512 + 1536) + 16 (+ d·V): small enough to check.
    assert expected["total"] == (8272 if not tie_embeddings else 7248)


def test_grouped_query_attention_has_fewer_parameters():
    mha = metrics.parameter_counts(DecoderLM(DecoderConfig(**dict(TINY, num_kv_heads=None))))
    gqa = metrics.parameter_counts(DecoderLM(DecoderConfig(**TINY)))
    # Key and value each lose (4 - 2) heads of 8 per layer.
    assert mha["total"] - gqa["total"] == TINY["num_layers"] * 2 * 16 * (4 - 2) * 8
    assert mha == hand_count(**dict(TINY, num_kv_heads=4))


def test_unscanned_layers_are_counted_one_by_one():
    counts = metrics.parameter_counts(DecoderLM(DecoderConfig(**TINY, scan_layers=False)))
    per_layer = hand_count(**TINY)["layers"] // TINY["num_layers"]
    assert counts["layers_0"] == counts["layers_1"] == per_layer
    assert counts["total"] == hand_count(**TINY)["total"]


# ---------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_flops_per_step_matches_formula(tie_embeddings):
    config = DecoderConfig(**TINY, tie_embeddings=tie_embeddings)
    params = abstract_params(config)
    batch, length = 4, 32
    tokens = batch * length
    # N: every parameter, but the input embedding lookup when it is not also the output layer.
    total = hand_count(**TINY, tie_embeddings=tie_embeddings)["total"]
    n = total if tie_embeddings else total - 64 * 16
    attention = 12 * 2 * 4 * 8 * length  # 12 · L · H · Q · T
    expected = 6 * n * tokens + attention * tokens
    flops = metrics.flops_per_step(params, tied_embeddings=tie_embeddings, num_layers=2,
                                   num_heads=4, head_dim=8, sequence_length=length,
                                   tokens_per_step=tokens)
    assert flops == expected


def test_flops_exclude_a_learned_position_table():
    config = DecoderConfig(**TINY, position_embedding="learned", max_length=128,
                           tie_embeddings=True)
    params = abstract_params(config)
    assert params["position_embed"]["embedding"].shape == (128, 16)
    flops = metrics.flops_per_step(params, tied_embeddings=True, num_layers=2, num_heads=4,
                                   head_dim=8, sequence_length=16, tokens_per_step=16)
    n = hand_count(**TINY, tie_embeddings=True)["total"]  # the position table not included
    assert flops == (6 * n + 12 * 2 * 4 * 8 * 16) * 16


def test_flops_of_a_hand_made_tree():
    params = {"token_embed": {"embedding": np.zeros((10, 4))},
              "layers": {"w": np.zeros((3, 4, 4))},  # 48
              "lm_head": {"kernel": np.zeros((4, 10))}}  # 40
    flops = metrics.flops_per_step(params, tied_embeddings=False, num_layers=3, num_heads=2,
                                   head_dim=2, sequence_length=5, tokens_per_step=10)
    assert flops == (6 * (48 + 40) + 12 * 3 * 2 * 2 * 5) * 10


# -------------------------------------------------------------------------------- writers
def read_tfrecords(path):
    """Records of a TFRecord file: [length u64][crc u32][data][crc u32] each."""
    records = []
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            records.append(f.read(length))
            f.read(4)
    return records


def tensorboard_scalars(directory):
    from tensorboardX.proto import event_pb2

    scalars = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for record in read_tfrecords(path):
            event = event_pb2.Event.FromString(record)
            scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return scalars


def test_metrics_writer_writes_jsonl_and_tensorboard(tmp_path):
    model_dir = tmp_path / "run"
    writer = metrics.MetricsWriter(str(model_dir))
    writer.write(10, {"train/loss": jnp.float32(2.5), "perf/mfu": np.float64(0.25)})
    writer.write(20, {"train/loss": 1.5, "eval/loss": float("nan"), "note": "text"})
    writer.close()

    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [10, 20]
    assert records[0] == {"step": 10, "train/loss": 2.5, "perf/mfu": 0.25}
    assert records[1]["note"] == "text" and math.isnan(records[1]["eval/loss"])
    assert [r["step"] for r in metrics.read_metrics(str(model_dir))] == [10, 20]

    scalars = tensorboard_scalars(model_dir / "tensorboard")
    assert (10, "train/loss", 2.5) in scalars
    assert (10, "perf/mfu", 0.25) in scalars
    assert (20, "train/loss", 1.5) in scalars
    assert not any(tag in ("eval/loss", "note", "step") for _, tag, _ in scalars)


def test_metrics_writer_appends_across_writers(tmp_path):
    for step in (1, 2):
        writer = metrics.MetricsWriter(str(tmp_path))
        writer.write(step, {"train/loss": float(step)})
        writer.close()
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [1, 2]


def test_disabled_metrics_writer_writes_nothing(tmp_path):
    writer = metrics.MetricsWriter(str(tmp_path / "run"), enabled=False)
    writer.write(1, {"train/loss": 1.0})
    writer.close()
    assert not (tmp_path / "run").exists()


def test_plot_losses_writes_a_png(tmp_path):
    writer = metrics.MetricsWriter(str(tmp_path))
    for step in range(1, 6):
        writer.write(step, {"train/loss": 5.0 / step})
    writer.write(5, {"eval/loss": 1.2})
    writer.close()
    path = metrics.plot_losses(str(tmp_path))
    assert path == str(tmp_path / "loss.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["loss.png"]  # no temp file left


def test_plot_losses_without_losses_writes_nothing(tmp_path):
    metrics.MetricsWriter(str(tmp_path)).close()
    assert metrics.plot_losses(str(tmp_path)) is None
    assert not (tmp_path / "loss.png").exists()


def test_an_object_store_gets_the_metrics_file_in_few_uploads(tmp_path, monkeypatch):
    """Where files cannot be appended to (gs://), the whole file is uploaded at most every
    `upload_every_s` and on close, not after every record."""
    uploads = []

    def upload(path, text):
        uploads.append(text)
        path.write_text(text)

    monkeypatch.setattr(metrics.paths, "is_local", lambda path: False)  # a "bucket" here
    monkeypatch.setattr(metrics.paths, "check_reachable", lambda path: None)
    monkeypatch.setattr(metrics.paths, "atomic_write_text", upload)
    writer = metrics.MetricsWriter(str(tmp_path))
    writer.upload_every_s = float("inf")
    for step in (1, 2, 3):
        writer.write(step, {"train/loss": 1.0 / step})
    assert uploads == []
    writer.close()
    assert len(uploads) == 1 and [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [
        1, 2, 3]
    resumed = metrics.MetricsWriter(str(tmp_path))  # a resumed run keeps what was written
    resumed.upload_every_s = 0.0
    resumed.write(4, {"train/loss": 0.2})
    assert len(uploads) == 2 and uploads[-1].count("\n") == 4
    resumed.close()
    assert len(uploads) == 2  # nothing left to upload

"""Encoder-decoder (T5 v1.1): packing isolation in all three attentions, relative position
buckets, mesh invariance of training, and span-corruption pretraining on the real corpus."""
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from packing import pack
from t5x_lite import optimizers, partitioning, train_loop
from t5x_lite.data import feature_converters, objectives, pipeline
from t5x_lite.models import encoder_decoder as ed
from t5x_lite.models import model_format, position_encodings
from t5x_lite.trainer import Trainer

TINY = ed.EncoderDecoderConfig(vocab_size=104, embed_dim=32, num_encoder_layers=2,
                               num_decoder_layers=2, num_heads=4, head_dim=8, mlp_dim=64)


@pytest.mark.parametrize("config", [TINY, ed.EncoderDecoderConfig(
    **{**TINY.__dict__, "mlp_activations": ("relu",), "tie_embeddings": True,
       "scan_layers": False})], ids=["v1.1", "v1.0"])
def test_packed_row_matches_each_example_alone(config):
    model = ed.EncoderDecoder(config)
    rng = np.random.default_rng(0)
    inputs = [rng.integers(2, 101, n) for n in (6, 9, 4)]
    targets = [rng.integers(2, 101, n) for n in (3, 5, 4)]
    enc, enc_seg, enc_pos = pack(inputs, 24)
    dec, dec_seg, dec_pos = pack(targets, 16)
    params = nn.unbox(model.init(jax.random.key(0), enc, dec)["params"])
    apply = jax.jit(model.apply)
    packed = apply({"params": params}, enc, dec, enc_seg, dec_seg, enc_pos, dec_pos)[0]
    offset = 0
    for x, y in zip(inputs, targets):
        alone = apply({"params": params}, x[None].astype(np.int32), y[None].astype(np.int32))[0]
        np.testing.assert_allclose(packed[offset : offset + len(y)], alone, atol=2e-5)
        offset += len(y)


def test_relative_position_buckets_follow_t5():
    distance = np.arange(-200, 201, dtype=np.int32)
    bidirectional = np.asarray(position_encodings.relative_position_bucket(
        distance, bidirectional=True, num_buckets=32, max_distance=128))
    causal = np.asarray(position_encodings.relative_position_bucket(
        distance, bidirectional=False, num_buckets=32, max_distance=128))
    at = lambda d: int(np.flatnonzero(distance == d)[0])
    # Exact buckets for small distances; keys after the query use the upper half.
    assert [bidirectional[at(d)] for d in range(1, 8)] == list(range(17, 24))
    assert [bidirectional[at(-d)] for d in range(0, 8)] == list(range(8))
    # Far distances share the last bucket of their half.
    assert bidirectional[at(-200)] == bidirectional[at(-128)] == 15
    assert bidirectional[at(200)] == 31
    # Causal: the future is bucket 0, the past uses all 32 buckets.
    assert (causal[distance > 0] == 0).all()
    assert [causal[at(-d)] for d in range(16)] == list(range(16))
    assert causal[at(-200)] == 31
    assert (np.diff(causal[::-1][:201]) >= 0).all()  # monotone in distance


ENC_DEC_FORMAT = model_format.of(ed.EncoderDecoder(TINY))


def _batch(trainer, rng):
    shapes = feature_converters.batch_shapes(ENC_DEC_FORMAT, {"inputs": 24, "targets": 8}, 8)
    batch = {}
    for name, (shape, dtype) in shapes.items():
        if "segment" in name:
            batch[name] = np.ones(shape, np.int32)
        elif "positions" in name:
            batch[name] = np.broadcast_to(np.arange(shape[1]), shape).astype(np.int32)
        elif "weights" in name:
            batch[name] = np.ones(shape, np.float32)
        else:
            batch[name] = rng.integers(2, 101, shape).astype(np.int32)
    return pipeline.global_batch(batch, trainer.batch_sharding)


def _losses(mesh_shape):
    mesh = partitioning.make_mesh(mesh_shape)
    schedule = optimizers.constant(1e-2)
    trainer = Trainer(ed.EncoderDecoder(TINY), optimizers.adamw(schedule), schedule, mesh,
                      partitioning.DEFAULT_RULES,
                      batch_shapes=feature_converters.batch_shapes(
                          ENC_DEC_FORMAT, {"inputs": 24, "targets": 8}, 8))
    state = trainer.create_state(0)
    batch = _batch(trainer, np.random.default_rng(1))
    losses = []
    for _ in range(3):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses


def test_training_does_not_depend_on_the_mesh():
    reference = _losses((1, 1, 1))
    assert reference[-1] < reference[0]
    for mesh_shape in [(8, 1, 1), (2, 2, 2)]:
        np.testing.assert_allclose(_losses(mesh_shape), reference, rtol=2e-5)


def test_span_corruption_pretraining_on_the_corpus(tmp_path, data_dir, vocabulary):
    config = ed.EncoderDecoderConfig(**{**TINY.__dict__, "vocab_size": 8320})
    train_loop.train(
        model_dir=str(tmp_path), model=ed.EncoderDecoder(config), vocabulary=vocabulary,
        train_data=pipeline.DatasetConfig(data_dir=data_dir),
        eval_data=pipeline.DatasetConfig(split="validation", data_dir=data_dir),
        objective=objectives.SpanCorruption(), optimizer=optimizers.adafactor,
        learning_rate=optimizers.rsqrt_decay(warmup_steps=100), train_steps=8, batch_size=8,
        feature_lengths={"inputs": 64, "targets": 16}, mesh_shape=(2, 2, 2), log_every=1,
        eval_every=8, eval_batches=2, checkpoint_every=8, progress_bar=False,
        peak_flops_per_device=1e12)
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.3
    assert all(r["data/truncated"] == 0 for r in records if "data/truncated" in r)
    assert any("eval/perplexity" in r for r in records)

"""End-to-end training on the real corpus: mesh invariance, exact resume, checkpoint fallback,
restoring onto another mesh, and stopping on NaN."""
import dataclasses
import glob
import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import optimizers, train_loop
from t5x_lite.data import pipeline
from t5x_lite.models import decoder

CONFIG = decoder.DecoderConfig(
    vocab_size=8320, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
    mlp_dim=64,
)


def run(model_dir, data_dir, vocabulary, *, steps, mesh_shape=(1, 1, 1), learning_rate=None,
        **overrides):
    kwargs = dict(
        model_dir=str(model_dir),
        model=decoder.DecoderLM(CONFIG),
        vocabulary=vocabulary,
        train_data=pipeline.DatasetConfig(data_dir=data_dir),
        eval_data=pipeline.DatasetConfig(split="validation", data_dir=data_dir),
        optimizer=optimizers.adamw,
        learning_rate=learning_rate or optimizers.warmup_cosine(1e-2, 2, 12),
        train_steps=steps,
        batch_size=8,
        feature_lengths={'targets': 64},
        mesh_shape=mesh_shape,
        log_every=1,
        eval_every=1000,
        eval_batches=2,
        checkpoint_every=2,
        progress_bar=False,
        peak_flops_per_device=1e12,
    )
    kwargs.update(overrides)
    return train_loop.train(**kwargs)


def train_losses(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir, vocabulary):
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    run(model_dir, data_dir, vocabulary, steps=6)
    return train_losses(model_dir)


def test_loss_falls_and_metrics_are_logged(uninterrupted, tmp_path_factory):
    assert sorted(uninterrupted) == [1, 2, 3, 4, 5, 6]
    assert uninterrupted[6] < uninterrupted[1] - 0.2


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2)])
def test_loss_does_not_depend_on_the_mesh(mesh_shape, uninterrupted, tmp_path, data_dir,
                                          vocabulary):
    run(tmp_path, data_dir, vocabulary, steps=6, mesh_shape=mesh_shape)
    losses = train_losses(tmp_path)
    for step, loss in uninterrupted.items():
        assert losses[step] == pytest.approx(loss, rel=2e-5), step


def test_stop_and_resume_is_bit_identical(uninterrupted, tmp_path, data_dir, vocabulary):
    run(tmp_path, data_dir, vocabulary, steps=3, checkpoint_every=100)  # final step forced
    run(tmp_path, data_dir, vocabulary, steps=6)
    assert train_losses(tmp_path) == uninterrupted  # exact float equality


def test_resume_onto_another_mesh(uninterrupted, tmp_path, data_dir, vocabulary):
    run(tmp_path, data_dir, vocabulary, steps=3, mesh_shape=(8, 1, 1))
    run(tmp_path, data_dir, vocabulary, steps=6, mesh_shape=(2, 2, 2))
    losses = train_losses(tmp_path)
    for step, loss in uninterrupted.items():
        assert losses[step] == pytest.approx(loss, rel=2e-5), step


def _corrupt(step_dir):
    damaged = 0
    for path in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "wb") as f:
                f.write(b"\x00garbage")
            damaged += 1
    assert damaged


def test_corrupt_latest_checkpoint_falls_back(uninterrupted, tmp_path, data_dir, vocabulary,
                                             caplog):
    run(tmp_path, data_dir, vocabulary, steps=4, checkpoint_every=2)  # saves steps 2 and 4
    checkpoint_dir = tmp_path / "checkpoints"
    _corrupt(checkpoint_dir / "4")
    (checkpoint_dir / "6.orbax-checkpoint-tmp").mkdir()  # a half-written save is ignored
    with caplog.at_level(logging.WARNING):
        run(tmp_path, data_dir, vocabulary, steps=6)
    assert "step 4 could not be restored" in caplog.text
    with open(tmp_path / "metrics.jsonl") as f:
        steps = [r["step"] for r in map(json.loads, f) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 3, 4, 5, 6]  # resumed from step 2, redid 3 and 4
    assert sorted(os.listdir(checkpoint_dir)) == ["2", "4", "4.unreadable", "6"]
    resumed = train_losses(tmp_path)
    assert resumed == uninterrupted


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, vocabulary):
    explode = lambda step: jnp.where(step >= 2, jnp.nan, 1e-3)
    with pytest.raises(train_loop.NonFiniteLossError, match="last good checkpoint is step 2"):
        run(tmp_path, data_dir, vocabulary, steps=6, learning_rate=explode, checkpoint_every=1)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    # The good checkpoint still restores and training can go on from it.
    run(tmp_path, data_dir, vocabulary, steps=3, learning_rate=optimizers.constant(1e-3))
    assert np.isfinite(train_losses(tmp_path)[3])


def _stop_and_resume_matches(tmp_path, data_dir, vocabulary, **overrides):
    run(tmp_path / "whole", data_dir, vocabulary, steps=4, **overrides)
    run(tmp_path / "part", data_dir, vocabulary, steps=2, **overrides)
    run(tmp_path / "part", data_dir, vocabulary, steps=4, **overrides)
    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "whole")


def test_span_corruption_stream_resumes_exactly(tmp_path, data_dir, vocabulary):
    """The concatenate-then-split chunker's state holds tuples, saved as JSON lists."""
    from t5x_lite.data import objectives
    from t5x_lite.models import encoder_decoder as ed

    t5 = ed.EncoderDecoder(ed.EncoderDecoderConfig(
        vocab_size=8320, embed_dim=32, num_encoder_layers=1, num_decoder_layers=1, num_heads=4,
        head_dim=8, mlp_dim=64))
    _stop_and_resume_matches(tmp_path, data_dir, vocabulary, model=t5,
                             objective=objectives.SpanCorruption(),
                             feature_lengths={"inputs": 64, "targets": 16})


def test_instruction_mixture_resumes_exactly(tmp_path, data_dir, vocabulary):
    from t5x_lite.data import instruction_pipeline
    from t5x_lite.data.tasks import formats, mixtures

    mixture = mixtures.hold_out(mixtures.get("embedded_suite"), "sentiment")
    data = instruction_pipeline.InstructionData(
        mixture, formats=formats.flan_2022_formats(2), data_dir=data_dir)
    _stop_and_resume_matches(tmp_path, data_dir, vocabulary, train_data=data,
                             eval_data=dataclasses.replace(data, split="dev"))

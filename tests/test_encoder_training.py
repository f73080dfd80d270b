"""The encoder pretrains with masked language modeling through the one training loop (and the
quickstart gin file wires it): validation MLM loss falls on python_docs."""
import json
import os

import pytest

from t5x_lite.main import main


def _eval_losses(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r["eval/loss"] for r in records if "eval/loss" in r]


def test_bert_quickstart_lowers_validation_mlm_loss(tmp_path, data_dir):
    model_dir = tmp_path / "bert"
    argv = ["train", "--gin_file=quickstart/bert_mlm.gin", f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.DATA_DIR='{data_dir}'", "--gin.TRAIN_STEPS=24", "--gin.SEQUENCE_LENGTH=64",
            "--gin.EVAL_EVERY=12", "--gin.EVAL_BATCHES=2", "--gin.CHECKPOINT_EVERY=24",
            "--gin.WARMUP_STEPS=4", "--gin.LEARNING_RATE=3e-3",
            "--gin.encoder.EncoderConfig.num_layers=2", "--gin.encoder.EncoderConfig.embed_dim=64",
            "--gin.encoder.EncoderConfig.mlp_dim=128", "--gin.encoder.EncoderConfig.num_heads=2",
            "--gin.encoder.EncoderConfig.head_dim=32"]
    assert main(argv) == 0
    losses = _eval_losses(model_dir)
    assert len(losses) == 2 and losses[1] < losses[0] - 0.3, losses
    with open(model_dir / "config.gin") as f:
        assert "MaskedLM" in f.read()


def test_bert_with_next_sentence_prediction_trains_both_heads(tmp_path, data_dir):
    """NEXT_SENTENCE=True: sentence pairs and the NSP head through the same loop; both
    losses are logged, and the NSP head's parameters move."""
    model_dir = tmp_path / "bert_nsp"
    argv = ["train", "--gin_file=quickstart/bert_mlm.gin", f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.DATA_DIR='{data_dir}'", "--gin.NEXT_SENTENCE=True", "--gin.TRAIN_STEPS=6",
            "--gin.SEQUENCE_LENGTH=32", "--gin.EVAL_EVERY=6", "--gin.EVAL_BATCHES=1",
            "--gin.CHECKPOINT_EVERY=6", "--gin.LOG_EVERY=3", "--gin.WARMUP_STEPS=1",
            "--gin.encoder.EncoderConfig.num_layers=1", "--gin.encoder.EncoderConfig.embed_dim=32",
            "--gin.encoder.EncoderConfig.mlp_dim=64", "--gin.encoder.EncoderConfig.num_heads=2",
            "--gin.encoder.EncoderConfig.head_dim=16"]
    assert main(argv) == 0
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if "train/next_sentence_loss" in r]
    assert len(train) == 2
    for record in train:  # what is minimised: the masked LM's mean plus the pairs' mean
        assert record["train/pretraining_loss"] == pytest.approx(
            record["train/loss"] + record["train/next_sentence_loss"], rel=1e-5)
        assert 0.3 < record["train/next_sentence_loss"] < 1.5  # near ln 2 at the start
    evals = [r for r in records if "eval/next_sentence_accuracy" in r]
    assert len(evals) == 1 and 0.0 <= evals[0]["eval/next_sentence_accuracy"] <= 1.0
    with open(model_dir / "config.gin") as f:
        config = f.read()
    assert "NEXT_SENTENCE = True" in config
    assert "EncoderConfig.next_sentence_head = %NEXT_SENTENCE" in config

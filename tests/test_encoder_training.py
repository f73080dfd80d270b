"""The encoder pretrains with masked language modeling through the one training loop (and the
quickstart gin file wires it): validation MLM loss falls on python_docs."""
import json
import os

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

"""`t5x-lite train` then `infer`, `score` and `eval` on the same gin files, as a user runs them."""
import json
import os
import subprocess
import sys

import pytest


def cli(*args, cwd, devices=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "t5x_lite.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, vocabulary):
    root = tmp_path_factory.mktemp("cli")
    (root / "tiny.gin").write_text("\n".join([
        "include 'quickstart/decoder_lm.gin'",
        "decoder.DecoderConfig.embed_dim = 32",
        "decoder.DecoderConfig.num_layers = 1",
        "decoder.DecoderConfig.mlp_dim = 64",
        f"DATA_DIR = '{data_dir}'",
        f"MODEL_DIR = '{root / 'run'}'",
        "TRAIN_STEPS = 3", "BATCH_SIZE = 2", "SEQUENCE_LENGTH = 32", "LOG_EVERY = 1",
        "EVAL_EVERY = 3", "EVAL_BATCHES = 1",
    ]))
    result = cli("train", "--gin_file=tiny.gin", cwd=root)
    assert result.returncode == 0, result.stderr
    (root / "prompts.jsonl").write_text(
        json.dumps({"inputs": "Return the number of"}) + "\n"
        + json.dumps({"inputs": "The json module", "seed": 3}) + "\n")
    (root / "pairs.jsonl").write_text(
        json.dumps({"inputs": "Return the", "targets": " number of items"}) + "\n")
    return root


def test_train_wrote_config_metrics_and_plot(trained):
    run = trained / "run"
    assert (run / "config.gin").read_text().count("train_loop.train") > 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]
    assert (run / "loss.png").stat().st_size > 1000


def test_infer_generates_for_every_line(trained):
    result = cli("infer", "--gin_file=tiny.gin", "--input=prompts.jsonl", "--output=out.jsonl",
                 "--gin.inference.infer.max_new_tokens=5", "--gin.decoding.Strategy.num_samples=2",
                 "--gin.decoding.Strategy.temperature=1.0", cwd=trained)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (trained / "out.jsonl").read_text().splitlines()]
    assert [line["inputs"] for line in lines] == ["Return the number of", "The json module"]
    for line in lines:
        assert len(line["outputs"]) == len(line["tokens"]) == len(line["scores"]) == 2
        assert all(len(tokens) <= 5 for tokens in line["tokens"])


def test_infer_with_int8_weights(trained):
    result = cli("infer", "--gin_file=tiny.gin", "--input=prompts.jsonl", "--output=int8.jsonl",
                 "--gin.inference.infer.max_new_tokens=5", "--gin.inference.infer.quantize='int8'",
                 cwd=trained)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (trained / "int8.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(1 <= len(line["tokens"][0]) <= 5 for line in lines)


def test_score_returns_log_likelihoods(trained):
    result = cli("score", "--gin_file=tiny.gin", "--input=pairs.jsonl", "--output=scores.jsonl",
                 cwd=trained)
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(x) for x in (trained / "scores.jsonl").read_text().splitlines()]
    assert line["log_likelihood"] < 0 and line["num_tokens"] >= 2
    assert line["mean_log_likelihood"] == pytest.approx(
        line["log_likelihood"] / line["num_tokens"], rel=1e-6)


def test_eval_reports_loss_and_task_metrics(trained):
    result = cli("eval", "--gin_file=tiny.gin", "--input=pairs.jsonl", cwd=trained)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout[result.stdout.index("{"):])
    assert metrics["validation/perplexity"] > 1
    assert {"exact_match", "bleu", "rouge1", "rouge2", "rougeLsum"} <= set(metrics)


def test_malformed_line_is_named_and_nothing_is_written(trained):
    (trained / "bad.jsonl").write_text('{"inputs": "fine"}\n{"inputs": 3}\n')
    (trained / "keep.jsonl").write_text("previous results\n")
    result = cli("infer", "--gin_file=tiny.gin", "--input=bad.jsonl", "--output=keep.jsonl",
                 cwd=trained)
    assert result.returncode == 2  # bad input, like a bad config
    assert "bad.jsonl:2" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (trained / "keep.jsonl").read_text() == "previous results\n"
    assert not [p for p in os.listdir(trained) if p.startswith(".keep.jsonl")]


@pytest.mark.parametrize("command,flags,message", [
    ("infer", ["--input=prompts.jsonl", "--output=never.jsonl",
               "--gin.inference.infer.max_new_tokens=0"],
     "max_new_tokens must be a positive integer, got 0"),
    ("score", ["--input=ids.jsonl", "--output=never.jsonl"],
     "ids.jsonl record 1: token id 9999 is outside the model's vocabulary (vocab_size=8320)"),
    ("infer", ["--input=empty.jsonl", "--output=never.jsonl"], "empty.jsonl: no records"),
    ("train", ["--gin.BATCH_SIZE=3", "--gin.MESH_SHAPE=(2, 1, 1)"],
     "batch_size=3 (BATCH_SIZE) must be a multiple of the 2 batch shards"),
    ("train", ["--gin.decoder.DecoderConfig.position_embedding='learned'",
               "--gin.decoder.DecoderConfig.max_length=16"],
     "feature length 32 (TASK_FEATURE_LENGTHS) exceeds the model's learned position table "
     "(max_length=16)"),
])
def test_bad_input_is_one_line_and_exit_2(trained, command, flags, message):
    (trained / "ids.jsonl").write_text(json.dumps({"inputs": [5], "targets": [9999]}) + "\n")
    (trained / "empty.jsonl").write_text("\n")
    if command == "train":
        flags = ["--gin.MODEL_DIR='bad_run'", *flags]
    result = cli(command, "--gin_file=tiny.gin", *flags, cwd=trained, devices=2)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (trained / "never.jsonl").exists()

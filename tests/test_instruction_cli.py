"""Instruction tuning as a user runs it: `t5x-lite tasks`, `mixture`, `train` with
runs/instruction_tune.gin (held-out cluster, init from a model directory), and `eval` on a
cluster (results.json + results.md), for both architectures."""
import json
import os
import subprocess
import sys

import pytest

TINY = {
    "decoder": ["include 'quickstart/instruction_tune_decoder.gin'",
                "decoder.DecoderConfig.embed_dim = 32", "decoder.DecoderConfig.num_layers = 1",
                "decoder.DecoderConfig.mlp_dim = 64", "SEQUENCE_LENGTH = 96"],
    "t5": ["include 'quickstart/instruction_tune_t5.gin'",
           "encoder_decoder.EncoderDecoderConfig.embed_dim = 32",
           "encoder_decoder.EncoderDecoderConfig.num_encoder_layers = 1",
           "encoder_decoder.EncoderDecoderConfig.num_decoder_layers = 1",
           "encoder_decoder.EncoderDecoderConfig.mlp_dim = 64",
           "TASK_FEATURE_LENGTHS = {'inputs': 96, 'targets': 32}"],
}


def cli(*args, cwd, data_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu", T5X_LITE_DATA_DIR=str(data_dir),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "t5x_lite.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _gin(root, architecture, data_dir, model_dir, **macros):
    lines = TINY[architecture] + [f"DATA_DIR = '{data_dir}'", f"MODEL_DIR = '{model_dir}'",
                                  "INIT_FROM = None", "BATCH_SIZE = 2", "LOG_EVERY = 1",
                                  "EVAL_BATCHES = 1", "HELD_OUT_CLUSTER = 'sentiment'"]
    lines += [f"{k} = {v!r}" for k, v in macros.items()]
    path = root / f"{architecture}.gin"
    path.write_text("\n".join(lines) + "\n")
    return path.name


@pytest.fixture(scope="module", params=["decoder", "t5"])
def tuned(request, tmp_path_factory, data_dir, vocabulary):
    root = tmp_path_factory.mktemp(f"sft_{request.param}")
    gin = _gin(root, request.param, data_dir, root / "sft", TRAIN_STEPS=3, EVAL_EVERY=3)
    result = cli("train", f"--gin_file={gin}", cwd=root, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    return root, gin


def test_tuning_logs_train_and_dev_losses(tuned):
    root, _ = tuned
    records = [json.loads(line) for line in (root / "sft/metrics.jsonl").read_text().split("\n")
               if line]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]
    assert any("eval/loss" in r for r in records)
    assert "HELD_OUT_CLUSTER = 'sentiment'" in (root / "sft/config.gin").read_text()


def test_a_new_run_starts_from_a_model_directory(tuned, data_dir):
    root, gin = tuned
    result = cli("train", f"--gin_file={gin}", f"--gin.MODEL_DIR='{root / 'again'}'",
                 f"--gin.INIT_FROM='{root / 'sft'}'", "--gin.TRAIN_STEPS=1",
                 "--gin.EVAL_EVERY=1", cwd=root, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert f"initialised parameters from {root / 'sft'}" in result.stderr


def test_eval_on_the_held_out_cluster_writes_results(tuned, data_dir):
    root, gin = tuned
    result = cli("eval", f"--gin_file={gin}", "--mixture=embedded_suite",
                 "--cluster=sentiment", "--gin.task_evaluation.run.max_examples=2",
                 cwd=root, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    results = json.loads((root / "sft/task_eval/results.json").read_text())
    assert set(results["tasks"]) == {"movie_review_sentiment", "word_sense_polarity",
                                     "word_valence"}
    for task in results["tasks"].values():
        assert task["metric"] == "accuracy" and task["examples"] == {"dev": 2, "test": 2}
        assert 0 <= task["min"] <= task["mean"] <= task["max"] <= 100
        assert len(task["templates"]) == 8  # two inverse templates are not evaluated
    table = (root / "sft/task_eval/results.md").read_text()
    assert "| word_valence | sentiment | accuracy | 2 / 2 |" in table
    assert "word_valence" in result.stdout


def test_eval_generates_for_generation_tasks(tuned, data_dir):
    root, gin = tuned
    result = cli("eval", f"--gin_file={gin}", "--tasks=country_capital",
                 "--output_dir=capital", "--gin.task_evaluation.run.max_examples=2",
                 "--gin.task_evaluation.run.max_new_tokens=4", cwd=root, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    task = json.loads((root / "capital/results.json").read_text())["tasks"]["country_capital"]
    assert task["metric"] == "exact_match" and "chance" not in task


def test_tasks_and_mixture_commands(tmp_path, data_dir):
    listing = cli("tasks", cwd=tmp_path, data_dir=data_dir)
    assert listing.returncode == 0, listing.stderr
    assert "cluster sentiment: " in listing.stdout and "mixtures: embedded_suite, flan2021" \
        in listing.stdout
    row = next(line for line in listing.stdout.splitlines() if line.startswith("word_valence"))
    assert "3000/200/300" in row and "10 (2 inverse)" in row
    assert any(line.startswith("rte ") and "tfds:super_glue/rte:1.0.2" in line
               and " -/-/- " in line for line in listing.stdout.splitlines())
    gin = _gin(tmp_path, "decoder", data_dir, tmp_path / "unused")
    mixture = cli("mixture", f"--gin_file={gin}", cwd=tmp_path, data_dir=data_dir)
    assert mixture.returncode == 0, mixture.stderr
    rows = [line.split() for line in mixture.stdout.splitlines()[3:]]
    assert {r[0] for r in rows} >= {"country_capital", "emoji_name_translation"}
    assert not {"word_valence", "movie_review_sentiment"} & {r[0] for r in rows}
    assert sum(float(r[-1].rstrip("%")) for r in rows) == pytest.approx(100, abs=0.05)


def test_an_unknown_held_out_cluster_is_one_line(tmp_path, data_dir):
    gin = _gin(tmp_path, "decoder", data_dir, tmp_path / "unused")
    result = cli("mixture", f"--gin_file={gin}", "--gin.HELD_OUT_CLUSTER='sentimen'",
                 cwd=tmp_path, data_dir=data_dir)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "'sentimen'" in result.stderr and "sentiment" in result.stderr

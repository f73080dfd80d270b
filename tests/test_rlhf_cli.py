"""InstructGPT's steps 2 and 3 as a user runs them: `train_reward`, `ppo`, `dpo`,
`best_of_n` and rejection-sampling fine-tuning with `train`, on the python_docs vocabulary
and VADER-ranked comparisons; configs written, errors in one line, runs resume."""
import json
import os
import subprocess
import sys

import pytest

import rlhf_fixtures as fx

TINY = ["include 'models/decoder_tiny.gin'", "include 'data/python_docs.gin'",
        "decoder.DecoderConfig.embed_dim = 32", "decoder.DecoderConfig.num_layers = 1",
        "decoder.DecoderConfig.mlp_dim = 64", "decoder.DecoderConfig.num_heads = 2"]


def cli(*args, cwd, data_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu", T5X_LITE_DATA_DIR=str(data_dir),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "t5x_lite.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def write_gin(root, name, run_file, **macros):
    lines = TINY + [f"include 'runs/{run_file}'"]
    lines += [f"{k} = {v!r}" for k, v in macros.items()]
    (root / name).write_text("\n".join(lines) + "\n")
    return f"--gin_file={name}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, data_dir, vocabulary):
    """An 'SFT' model (pretrained 2 steps), comparisons, prompts and a trained RM."""
    root = tmp_path_factory.mktemp("rlhf_cli")
    pretrain = root / "pretrain.gin"
    pretrain.write_text("\n".join(TINY + [
        "include 'runs/pretrain_decoder.gin'", f"MODEL_DIR = '{root / 'sft'}'",
        "TRAIN_STEPS = 2", "BATCH_SIZE = 2", "SEQUENCE_LENGTH = 64",
        "EVAL_EVERY = 2", "EVAL_BATCHES = 1", "LOG_EVERY = 1"]) + "\n")
    result = cli("train", "--gin_file=pretrain.gin", cwd=root, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    fx.write_comparisons(root / "comparisons.jsonl", k=3)
    with open(root / "comparisons.jsonl", "a") as f:
        f.write("{not json\n")  # a malformed line: skipped, counted, named
    fx.write_prompts(root / "prompts.jsonl")
    gin = write_gin(root, "rm.gin", "reward_model.gin", MODEL_DIR=str(root / "rm"),
                    INIT_FROM=str(root / "sft"), PREFERENCES="comparisons.jsonl",
                    TRAIN_STEPS=4, BATCH_SIZE=4, EVAL_EVERY=4, LOG_EVERY=2,
                    PROMPT_LENGTH=16, RESPONSE_LENGTH=8, EVAL_FRACTION=0.3, MAX_RESPONSES=3)
    rm = cli("train_reward", gin, cwd=root, data_dir=data_dir)
    assert rm.returncode == 0, rm.stderr
    return root, rm


def metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_reward_model_trains_evaluates_and_normalises(workspace):
    root, result = workspace
    records = metrics(root / "rm/metrics.jsonl")
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4]
    evaluation = [r for r in records if "eval/pairwise_accuracy" in r]
    assert evaluation and 0 <= evaluation[-1]["eval/pairwise_accuracy"] <= 1
    assert any("reward/normalization_offset" in r for r in records)
    assert "initialised the trunk from" in result.stderr
    assert "comparisons.jsonl:13: skipped (bad JSON)" in result.stderr
    assert "reward_model.train_reward.margin = %MARGIN" in (root / "rm/config.gin").read_text()


def test_reward_model_resumes_and_rejects_an_unknown_binding(workspace, data_dir):
    root, _ = workspace
    again = cli("train_reward", "--gin_file=rm.gin", "--gin.TRAIN_STEPS=5", cwd=root,
                data_dir=data_dir)
    assert again.returncode == 0, again.stderr
    assert "resumed from checkpoint at step 4" in again.stderr
    wrong = cli("train_reward", "--gin_file=rm.gin", "--gin.reward_model.train_reward.marign=1",
                cwd=root, data_dir=data_dir)
    assert wrong.returncode == 2
    assert len(wrong.stderr.strip().splitlines()) == 1 and "marign" in wrong.stderr


@pytest.mark.parametrize("value_model", ["reward_model", "policy_head"])
def test_ppo_runs_exports_its_policy_and_resumes(workspace, data_dir, value_model):
    root, _ = workspace
    model_dir = root / f"ppo_{value_model}"
    gin = write_gin(root, f"ppo_{value_model}.gin", "ppo.gin", MODEL_DIR=str(model_dir),
                    INIT_FROM=str(root / "sft"), REWARD_MODEL_DIR=str(root / "rm"),
                    PROMPTS="prompts.jsonl", VALUE_MODEL=value_model, TRAIN_STEPS=2,
                    BATCH_SIZE=4, NUM_MINIBATCHES=2, PPO_EPOCHS=1, PROMPT_LENGTH=16,
                    MAX_NEW_TOKENS=6, EVAL_EVERY=2, CHECKPOINT_EVERY=1, EVAL_FRACTION=0.3,
                    PTX_COEF=0.5, PTX_BATCH_SIZE=2, PTX_FEATURE_LENGTHS={"targets": 32})
    result = cli("ppo", gin, cwd=root, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    records = metrics(model_dir / "metrics.jsonl")
    logged = {k for r in records for k in r}
    for name in ("train/rollout/score", "train/rollout/kl", "train/beta", "train/entropy",
                 "train/clip_fraction", "train/approx_kl", "train/value_loss",
                 "train/explained_variance", "train/rollout/response_length",
                 "train/perf/rollout_tokens_per_second", "train/perf/update_tokens_per_second",
                 "train/ptx_loss", "eval/score", "eval/kl"):
        assert name in logged, name
    assert (model_dir / "params").is_dir() and (model_dir / "ppo.png").exists()
    again = cli("ppo", gin, "--gin.TRAIN_STEPS=3", cwd=root, data_dir=data_dir)
    assert again.returncode == 0, again.stderr
    assert "resumed from checkpoint at step 2" in again.stderr


def test_dpo_and_best_of_n_then_rejection_sampling(workspace, data_dir):
    root, _ = workspace
    gin = write_gin(root, "dpo.gin", "dpo.gin", MODEL_DIR=str(root / "dpo"),
                    INIT_FROM=str(root / "sft"), PREFERENCES="comparisons.jsonl",
                    TRAIN_STEPS=2, BATCH_SIZE=2, PROMPT_LENGTH=16, RESPONSE_LENGTH=8,
                    EVAL_EVERY=2, LOG_EVERY=1, EVAL_FRACTION=0.3)
    result = cli("dpo", gin, cwd=root, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    records = metrics(root / "dpo/metrics.jsonl")
    assert "eval/reward_accuracy" in {k for r in records for k in r}

    gin = write_gin(root, "bon.gin", "best_of_n.gin", MODEL_DIR=str(root / "sft"),
                    REWARD_MODEL_DIR=str(root / "rm"), NUM_SAMPLES=3, MAX_NEW_TOKENS=6,
                    PROMPT_LENGTH=16, BATCH_SIZE=4)
    result = cli("best_of_n", gin, "--input=prompts.jsonl", "--output=best.jsonl", cwd=root,
                 data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    best = [json.loads(line) for line in (root / "best.jsonl").read_text().splitlines()]
    assert len(best) == len(fx.PROMPTS)
    assert all(b["score"] == max(b["scores"]) and len(b["scores"]) == 3 for b in best)

    gin = write_gin(root, "rs.gin", "rejection_sampling.gin", MODEL_DIR=str(root / "rs"),
                    INIT_FROM=str(root / "sft"), SAMPLES="best.jsonl", TRAIN_STEPS=2,
                    BATCH_SIZE=2, TASK_FEATURE_LENGTHS={"targets": 48}, EVAL_EVERY=2,
                    EVAL_BATCHES=1, LOG_EVERY=1)
    result = cli("train", gin, cwd=root, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "initialised parameters from" in result.stderr

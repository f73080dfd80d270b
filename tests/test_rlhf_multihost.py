"""Preference learning across two CPU processes (4 fake devices each, jax.distributed on
localhost): the reward model trains on exactly what one 8-device process trains on, and PPO
and DPO run (and agree with one process) with each process reading its own rows."""
import json

import pytest

import rlhf_fixtures as fx
from t5x_lite import main as cli
from test_multihost import run_two_processes, succeeded

TINY = ["--gin_file=models/decoder_tiny.gin", "--gin_file=data/python_docs.gin",
        "--gin.decoder.DecoderConfig.embed_dim=32", "--gin.decoder.DecoderConfig.num_layers=1",
        "--gin.decoder.DecoderConfig.mlp_dim=64", "--gin.decoder.DecoderConfig.num_heads=2"]


def reward_argv(root, data_dir, model_dir):
    return ["train_reward", *TINY, "--gin_file=runs/reward_model.gin",
            f"--gin.DATA_DIR='{data_dir}'", f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.INIT_FROM='{root / 'sft'}'", f"--gin.PREFERENCES='{root / 'cmp.jsonl'}'",
            "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=8", "--gin.LOG_EVERY=1",
            "--gin.EVAL_EVERY=3", "--gin.PROMPT_LENGTH=16", "--gin.RESPONSE_LENGTH=8",
            "--gin.EVAL_FRACTION=0.3", "--gin.MESH_SHAPE=(8,1,1)", "--gin.MAX_RESPONSES=3"]


def ppo_argv(root, data_dir, model_dir):
    return ["ppo", *TINY, "--gin_file=runs/ppo.gin", f"--gin.DATA_DIR='{data_dir}'",
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INIT_FROM='{root / 'sft'}'",
            f"--gin.REWARD_MODEL_DIR='{root / 'rm'}'", f"--gin.PROMPTS='{root / 'p.jsonl'}'",
            "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.PPO_EPOCHS=1",
            "--gin.PROMPT_LENGTH=16", "--gin.MAX_NEW_TOKENS=4", "--gin.EVAL_EVERY=2",
            "--gin.EVAL_FRACTION=0.3", "--gin.MESH_SHAPE=(2,2,2)"]


def dpo_argv(root, data_dir, model_dir):
    return ["dpo", *TINY, "--gin_file=runs/dpo.gin", f"--gin.DATA_DIR='{data_dir}'",
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INIT_FROM='{root / 'sft'}'",
            f"--gin.PREFERENCES='{root / 'cmp.jsonl'}'", "--gin.TRAIN_STEPS=2",
            "--gin.BATCH_SIZE=8", "--gin.LOG_EVERY=1", "--gin.EVAL_EVERY=2",
            "--gin.PROMPT_LENGTH=16", "--gin.RESPONSE_LENGTH=8", "--gin.EVAL_FRACTION=0.3",
            "--gin.MESH_SHAPE=(2,2,2)"]


def logged(model_dir, key):
    records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text()
               .splitlines()]
    return {r["step"]: r[key] for r in records if key in r}


@pytest.fixture(scope="module")
def job(tmp_path_factory, data_dir, vocabulary):
    root = tmp_path_factory.mktemp("rlhf_multihost")
    fx.write_comparisons(root / "cmp.jsonl")
    fx.write_prompts(root / "p.jsonl")
    assert cli.main(["train", "--gin_file=quickstart/decoder_lm.gin", *TINY[2:],
                     f"--gin.DATA_DIR='{data_dir}'", f"--gin.MODEL_DIR='{root / 'sft'}'",
                     "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.SEQUENCE_LENGTH=32",
                     "--gin.EVAL_EVERY=2", "--gin.EVAL_BATCHES=1"]) == 0
    reference = root / "reference"
    for argv in (reward_argv(root, data_dir, root / "rm"),
                 ppo_argv(root, data_dir, reference / "ppo"),
                 dpo_argv(root, data_dir, reference / "dpo")):
        assert cli.main(argv) == 0
    commands = {"train_reward": reward_argv(root, data_dir, root / "two" / "rm"),
                "ppo": ppo_argv(root, data_dir, root / "two" / "ppo"),
                "dpo": dpo_argv(root, data_dir, root / "two" / "dpo")}
    return root, reference, root / "two", run_two_processes(commands, root)


def test_reward_model_on_two_processes_matches_one(job):
    root, _, two, _ = job
    succeeded(job, "train_reward")
    expected = logged(root / "rm", "train/loss")
    assert sorted(expected) == [1, 2, 3]
    assert logged(two / "rm", "train/loss") == pytest.approx(expected, rel=1e-5)
    assert logged(two / "rm", "eval/pairwise_accuracy") == pytest.approx(
        logged(root / "rm", "eval/pairwise_accuracy"))


def test_ppo_and_dpo_on_two_processes_match_one(job):
    _, reference, two, _ = job
    succeeded(job, "ppo", "dpo")
    # The first rollout samples from the same policy with the same keys on the same mesh.
    assert logged(two / "ppo", "train/rollout/score")[1] == pytest.approx(
        logged(reference / "ppo", "train/rollout/score")[1], rel=1e-4)
    assert (two / "ppo" / "params").is_dir()
    assert logged(two / "dpo", "train/loss") == pytest.approx(
        logged(reference / "dpo", "train/loss"), rel=1e-5)

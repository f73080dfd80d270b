"""Sweeps (t5x_lite/sweeps/): expansion, naming, commands, skip/resume, failures, reports."""
import csv
import io
import json
import pathlib
import shlex

import pytest

from t5x_lite import main
from t5x_lite.errors import InputError
from t5x_lite.sweeps import report, runner, spec

SWEEP = """
name = "grid"
seeds = [0, 1]
metrics = ["train:eval/perplexity", "eval:results.json#mean"]

[[stage]]
name = "train"
command = "train"
gin_files = ["quickstart/decoder_lm.gin"]
bindings = { TRAIN_STEPS = 3 }

[[stage]]
name = "eval"
command = "eval"
model_dir = "train"
gin_files = ["quickstart/decoder_lm.gin"]
args = ["--mixture=embedded_suite", "--output_dir={stage_dir}"]

[axes.lr]
LEARNING_RATE = [1e-3, 3e-3, 1e-2]
"train:WARMUP_STEPS" = [1, 2, 3]

[axes.width]
"train:decoder.DecoderConfig.embed_dim" = [32, 64]
"""


@pytest.fixture
def sweep():
    import tomllib

    return spec.parse(tomllib.loads(SWEEP), "grid.toml")


def test_axes_multiply_keys_zip_and_seeds_repeat(sweep):
    trials = spec.trials(sweep)
    assert len(trials) == 3 * 2 * 2
    points = {(t.values["LEARNING_RATE"], t.values["train:WARMUP_STEPS"]) for t in trials}
    assert points == {(1e-3, 1), (3e-3, 2), (1e-2, 3)}  # zipped, never crossed
    assert {t.values["train:decoder.DecoderConfig.embed_dim"] for t in trials} == {32, 64}
    names = [t.name for t in trials]
    assert len(set(names)) == len(names) and names == [t.name for t in spec.trials(sweep)]
    assert names[0].startswith("LEARNING_RATE=0.001,WARMUP_STEPS=1,embed_dim=32,seed=0-")
    assert len({t.group for t in trials}) == 6  # seeds share a group


def test_stage_commands_scope_bindings_and_seed_training_only(sweep):
    trial = spec.trials(sweep)[1]
    train, evaluate = (spec.stage_command(trial, stage, "/out/t") for stage in sweep.stages)
    assert train[:2] == ["train", "--gin_file=quickstart/decoder_lm.gin"]
    assert "--gin.WARMUP_STEPS=1" in train and "--gin.SEED=1" in train
    assert "--gin.MODEL_DIR='/out/t/train'" in train
    assert not any("WARMUP" in a or "SEED" in a for a in evaluate)  # scoped / not training
    assert "--gin.LEARNING_RATE=0.001" in evaluate  # unscoped keys bind every stage
    assert "--gin.MODEL_DIR='/out/t/train'" in evaluate and "--output_dir=/out/t/eval" in evaluate


def test_gin_strings_with_spaces_quotes_and_shell_characters_arrive_intact():
    raw = {"name": "q", "stage": [{"name": "train", "command": "train"}],
           "axes": {"a": {"NOTE": ["'it''s $HOME; rm -rf / & echo \"hi\"'"]}}}
    trial = spec.trials(spec.parse(raw))[0]
    command = spec.stage_command(trial, spec.parse(raw).stages[0], "/d")
    assert "--gin.NOTE='it''s $HOME; rm -rf / & echo \"hi\"'" in command
    assert shlex.split(shlex.join(command)) == command  # what --dry_run prints, re-read


@pytest.mark.parametrize("raw, message", [
    ({"name": "x"}, "no \\[\\[stage\\]\\]"),
    ({"name": "x", "stage": [{"name": "a", "command": "train"}], "axes": {"b": {"X": [1, 2], "Y": [1]}}},
     "all of one length"),
    ({"name": "x", "stage": [{"name": "a", "command": "train"}], "axes": {"b": {"z:X": [1]}}},
     "names no stage"),
    ({"name": "x", "stage": [{"name": "a", "command": "train"}], "metrics": ["loss"]},
     "STAGE:NAME"),
    ({"name": "x", "stage": [{"name": "a", "command": "train", "gin": []}]}, "unknown key"),
])
def test_a_bad_sweep_file_is_one_line(raw, message):
    with pytest.raises(InputError, match=message):
        spec.parse(raw, "bad.toml")


def fake_executor(calls, fail_when=lambda arguments: False):
    def execute(arguments, log_path):
        calls.append(list(arguments))
        if fail_when(arguments):
            return 1, "InputError: learning rate refused"
        return 0, ""
    return execute


def test_a_failed_trial_is_recorded_the_sweep_goes_on_and_a_rerun_resumes(sweep, tmp_path):
    calls = []
    bad = lambda a: a[0] == "eval" and "--gin.LEARNING_RATE=0.01" in a  # noqa: E731
    outcomes = runner.run_sweep(sweep, str(tmp_path), execute=fake_executor(calls, bad),
                                log=lambda line: None)
    assert [o.status for o in outcomes].count("failed") == 4 and len(calls) == 24
    failed = next(o for o in outcomes if o.status == "failed")
    status = runner.read_status(runner.trial_dir(str(tmp_path), failed.trial))
    assert status["status"] == "failed" and status["stages"]["train"]["status"] == "done"
    assert status["stages"]["eval"]["error"] == "InputError: learning rate refused"
    calls.clear()
    again = runner.run_sweep(sweep, str(tmp_path), execute=fake_executor(calls),
                             log=lambda line: None)
    assert [o.status for o in again].count("skipped") == 8
    assert [c[0] for c in calls] == ["eval"] * 4  # the failed stage only, train was done


def write_fake_trial(directory, seed, lr, perplexity_by_step, mean):
    train = directory / "train"
    train.mkdir(parents=True)
    records = [{"step": step, "train/loss": 5.0 - step / 10, "perf/tflops_per_step": 0.5,
                "eval/loss": float(p) / 10, "eval/perplexity": p}
               for step, p in perplexity_by_step]
    (train / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (directory / "train.log").write_text("model: 1,234,567 parameters; 0.5 TFLOPs per step\n")
    (directory / "eval").mkdir()
    (directory / "eval" / "results.json").write_text(json.dumps({"mean": mean}))


def test_report_from_trial_directories(tmp_path):
    raw = {"name": "r", "seeds": [0, 1], "metrics": ["train:eval/perplexity", "eval:results.json#mean"],
           "stage": [{"name": "train", "command": "train"},
                     {"name": "eval", "command": "eval", "model_dir": "train"}],
           "axes": {"lr": {"LEARNING_RATE": [0.001, 0.003]}}}
    sweep = spec.parse(raw)
    figures = {(0.001, 0): (30, 40.0), (0.001, 1): (32, 42.0), (0.003, 0): (20, 60.0),
               (0.003, 1): (22, 64.0)}
    for trial in spec.trials(sweep):
        final, mean = figures[(trial.values["LEARNING_RATE"], trial.seed)]
        directory = tmp_path / "r" / trial.name
        write_fake_trial(directory, trial.seed, trial.values["LEARNING_RATE"],
                         [(10, final + 10), (20, final)], mean)
        runner._write_status(str(directory), trial, {
            "train": {"status": "done"}, "eval": {"status": "done"}})
    written = report.write(sweep, str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(pathlib.Path(written["csv"]).read_text())))
    assert len(rows) == 4 and rows[0]["parameters"] == "1234567.0"
    assert float(rows[0]["train:eval/perplexity"]) == 30.0
    table = pathlib.Path(written["markdown"]).read_text()
    assert "| 0.003 | 2 | 1,234,567 | 0.5 |" in table
    # Sample std over the two seeds: |a - b| / sqrt(2).
    assert "**21 ± 1.414**" in table and "**62 ± 2.828**" in table  # lower perplexity, higher mean
    assert "31 ± 1.414" in table and "**31" not in table
    assert set(written) == {"csv", "markdown", "curves", "metric"}


def test_report_lists_failed_trials(sweep, tmp_path):
    runner.run_sweep(sweep, str(tmp_path), execute=fake_executor([], lambda a: a[0] == "train"),
                     log=lambda line: None)
    table = pathlib.Path(report.write(sweep, str(tmp_path))["markdown"]).read_text()
    assert "Failed trials:" in table and table.count("learning rate refused") == 12


def test_two_real_tiny_trials_end_to_end(tmp_path, data_dir, capsys):
    (tmp_path / "tiny.gin").write_text("\n".join([
        "include 'quickstart/decoder_lm.gin'",
        "decoder.DecoderConfig.embed_dim = 32", "decoder.DecoderConfig.num_layers = 1",
        "decoder.DecoderConfig.mlp_dim = 64", f"DATA_DIR = '{data_dir}'",
        "TRAIN_STEPS = 4", "BATCH_SIZE = 8", "SEQUENCE_LENGTH = 32", "LOG_EVERY = 2",
        "EVAL_EVERY = 2", "EVAL_BATCHES = 1", "CHECKPOINT_EVERY = 2"]))
    (tmp_path / "two.toml").write_text(f"""
name = "two"
metrics = ["train:eval/accuracy"]
[[stage]]
name = "train"
command = "train"
gin_files = ["{tmp_path / 'tiny.gin'}"]
[axes.lr]
LEARNING_RATE = [1e-3, 1e-2]
""")
    args = ["sweep", f"--sweep_file={tmp_path / 'two.toml'}", f"--output_dir={tmp_path / 'out'}"]
    assert main.main(args) == 0
    out = capsys.readouterr().out
    assert "2 of 2 trials done, 0 failed" in out and "wrote markdown" in out
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "two" / "results.csv").read_text())))
    assert [r["status"] for r in rows] == ["done", "done"]
    assert all(float(r["validation_loss"]) > 0 and float(r["parameters"]) > 0 for r in rows)
    assert main.main(args) == 0 and capsys.readouterr().out.count("skipped") == 2
    assert main.main([*args, "--report_only"]) == 0

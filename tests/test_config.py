"""The CLI's configuration errors: exit code 2 and one line naming the binding and its source.

Each case runs `python -m t5x_lite.main` in a fresh directory (so gin files are found through
the packaged gin_configs/), once plain and once with --verbose (which adds the traceback).
Runs that get as far as `train` point DATA_DIR at an empty directory and check it stays empty:
a config error must be reported before any corpus or vocabulary is built.
"""
import os
import re
import subprocess
import sys
import time

import pytest

CONFIG_ERROR = "t5x-lite: config error: "


@pytest.fixture
def workdir(tmp_path):
    """An empty working directory with an empty data directory next to it."""
    (tmp_path / "work").mkdir()
    (tmp_path / "data").mkdir()
    return tmp_path


def cli_env(workdir):
    env = dict(os.environ, JAX_PLATFORMS="cpu", T5X_LITE_DATA_DIR=str(workdir / "data"))
    env.pop("XLA_FLAGS", None)  # one CPU device is enough for config errors
    return env


def run_cli(workdir, *args, verbose=False):
    command = [sys.executable, "-m", "t5x_lite.main", *args] + (["--verbose"] if verbose else [])
    return subprocess.Popen(command, cwd=workdir / "work", env=cli_env(workdir), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process, timeout=120):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def assert_config_error(workdir, *args):
    """Runs the CLI plain and verbose (side by side); returns the one-line message."""
    plain, verbose = run_cli(workdir, *args), run_cli(workdir, *args, verbose=True)
    (code, _, stderr), (verbose_code, _, verbose_stderr) = finish(plain), finish(verbose)
    assert code == 2, stderr
    assert len(stderr.splitlines()) == 1, f"expected one line, got:\n{stderr}"
    assert stderr.startswith(CONFIG_ERROR), stderr
    assert "Traceback" not in stderr
    assert verbose_code == 2, verbose_stderr
    assert "Traceback (most recent call last)" in verbose_stderr
    assert stderr.strip() in verbose_stderr.splitlines()
    assert os.listdir(workdir / "data") == [], "a config error must not build data"
    return stderr.strip()[len(CONFIG_ERROR):]


def write(workdir, name, text):
    (workdir / "work" / name).write_text(text)
    return name


def train_flags(workdir):
    return [f"--gin.DATA_DIR='{workdir / 'data'}'", f"--gin.MODEL_DIR='{workdir / 'model'}'"]


def test_misspelled_parameter_in_user_file(workdir):
    user = write(workdir, "user.gin",
                 "include 'quickstart/decoder_lm.gin'\n\ndecoder.DecoderConfig.num_layerz = 2\n")
    message = assert_config_error(workdir, "params", f"--gin_file={user}")
    assert message.startswith("user.gin:3: ")
    assert "num_layerz" in message and "decoder.DecoderConfig" in message


def test_unknown_configurable_in_user_file(workdir):
    user = write(workdir, "user.gin",
                 "include 'quickstart/decoder_lm.gin'\ndecoder.DecoderConfigg.num_layers = 2\n")
    message = assert_config_error(workdir, "params", f"--gin_file={user}")
    assert message.startswith("user.gin:2: ")
    assert "decoder.DecoderConfigg" in message


def test_misspelled_parameter_on_command_line(workdir):
    message = assert_config_error(workdir, "params", "--gin_file=quickstart/decoder_lm.gin",
                                  "--gin.decoder.DecoderConfig.num_layerz=2")
    assert message.startswith("--gin.decoder.DecoderConfig.num_layerz=2: ")
    assert "num_layerz" in message


def test_missing_required_macro(workdir):
    message = assert_config_error(
        workdir, "train", "--gin_file=models/decoder_tiny.gin",
        "--gin_file=data/python_docs.gin", "--gin_file=runs/pretrain_decoder.gin")
    assert "MODEL_DIR" in message
    location = message.split(": ")[0]
    assert re.search(r"runs/pretrain_decoder\.gin:\d+$", location), message
    assert "--gin.MODEL_DIR=" in message  # says how to set it


def test_bad_macro_value_on_command_line_fails_before_data(workdir):
    message = assert_config_error(workdir, "train", "--gin_file=quickstart/decoder_lm.gin",
                                  *train_flags(workdir), "--gin.TRAIN_STEPS=-3")
    assert message.startswith("--gin.TRAIN_STEPS=-3: ")
    assert "TRAIN_STEPS" in message and "train_steps" in message and "-3" in message


def test_bad_macro_value_in_file_names_the_line_that_won(workdir):
    user = write(workdir, "user.gin",
                 "include 'quickstart/decoder_lm.gin'\nTRAIN_STEPS = 5\nTRAIN_STEPS = 0\n")
    message = assert_config_error(workdir, "train", f"--gin_file={user}", *train_flags(workdir))
    assert message.startswith("user.gin:3: TRAIN_STEPS")
    assert "train_steps must be a positive integer, got 0" in message


def test_bad_parameter_value_on_command_line_fails_before_data(workdir):
    message = assert_config_error(workdir, "train", "--gin_file=quickstart/decoder_lm.gin",
                                  *train_flags(workdir),
                                  "--gin.decoder.DecoderConfig.remat_policy='bogus'")
    assert message.startswith("--gin.decoder.DecoderConfig.remat_policy='bogus': ")
    assert "remat_policy must be one of" in message and "'bogus'" in message


def test_bad_parameter_value_in_block_names_file_and_line(workdir):
    user = write(workdir, "user.gin",
                 "include 'quickstart/decoder_lm.gin'\n"
                 "decoder.DecoderConfig:\n  num_layers = 2\n  remat_policy = 'bogus'\n")
    message = assert_config_error(workdir, "params", f"--gin_file={user}")
    assert message.startswith("user.gin:4: decoder.DecoderConfig.remat_policy: ")


def test_unparsable_binding(workdir):
    message = assert_config_error(workdir, "params", "--gin_file=quickstart/decoder_lm.gin",
                                  "--gin.TRAIN_STEPS=(3")
    assert message.startswith("--gin.TRAIN_STEPS=(3: cannot parse")


def test_unquoted_string_binding_gets_a_hint(workdir):
    message = assert_config_error(workdir, "params", "--gin_file=quickstart/decoder_lm.gin",
                                  "--gin.MODEL_DIR=/tmp/run")
    assert message.startswith("--gin.MODEL_DIR=/tmp/run: cannot parse")
    assert "quote strings" in message


def test_unknown_gin_file(workdir):
    message = assert_config_error(workdir, "params", "--gin_file=models/no_such_model.gin")
    assert "'models/no_such_model.gin' not found" in message


def test_unknown_included_gin_file(workdir):
    user = write(workdir, "user.gin", "# a comment\ninclude 'models/no_such_model.gin'\n")
    message = assert_config_error(workdir, "params", f"--gin_file={user}")
    assert message.startswith("user.gin:2: ")
    assert "'models/no_such_model.gin' not found" in message


def test_train_without_a_run_config(workdir):
    message = assert_config_error(workdir, "train", "--gin_file=models/decoder_tiny.gin")
    assert message.startswith("no gin file configures t5x_lite.train_loop.train")


def test_params_prints_counts_that_add_up(workdir):
    start = time.perf_counter()
    code, stdout, stderr = finish(run_cli(workdir, "params", "--gin_file=models/decoder_50m.gin"))
    elapsed = time.perf_counter() - start
    assert code == 0, stderr
    *modules, last = stdout.strip().splitlines()
    assert re.fullmatch(r"total_params: \d+", last)
    total = int(last.split(": ")[1])
    assert total == 50_012_672
    per_module = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in modules}
    assert set(per_module) == {"token_embed", "layers", "final_norm"}
    assert sum(per_module.values()) == total
    assert elapsed < 60, f"params took {elapsed:.0f}s: it should only trace shapes"


# ----------------------------------------------------------------- GinConfig in-process
@pytest.fixture
def gin_config(tmp_path, monkeypatch):
    """GinConfig run from an empty directory; gin's global state is cleared afterwards."""
    import gin
    from t5x_lite import config

    monkeypatch.chdir(tmp_path)
    yield config.GinConfig
    gin.clear_config(clear_constants=True)


def test_later_bindings_win_over_files_and_earlier_bindings(gin_config, tmp_path):
    import gin

    (tmp_path / "user.gin").write_text(
        "include 'quickstart/decoder_lm.gin'\ndecoder.DecoderConfig.num_layers = 2\n")
    gin_config(["user.gin"], [])
    from t5x_lite import config

    quickstart = os.path.join(config.PACKAGE_GIN_DIR, "quickstart", "decoder_lm.gin")
    steps = int(re.search(r"^TRAIN_STEPS = (\d+)", open(quickstart).read(), re.M).group(1))
    assert gin.query_parameter("%TRAIN_STEPS") == steps != 10000  # quickstart beats runs/
    assert gin.query_parameter("decoder.DecoderConfig.num_layers") == 2  # user file wins
    gin_config(["user.gin"], ["TRAIN_STEPS = 5", "decoder.DecoderConfig.num_layers = 3",
                              "TRAIN_STEPS = 7"])
    assert gin.query_parameter("%TRAIN_STEPS") == 7
    assert gin.query_parameter("decoder.DecoderConfig.num_layers") == 3


def test_undefined_macro_names_the_flag_using_it(gin_config):
    from t5x_lite import config

    with pytest.raises(config.ConfigError,
                       match=r"^--gin\.TRAIN_STEPS=%NOT_DEFINED: macro %NOT_DEFINED is never"):
        gin_config(["quickstart/decoder_lm.gin"], ["TRAIN_STEPS = 1",
                                                   "TRAIN_STEPS = %NOT_DEFINED"])


def test_folders_named_like_gin_directories_do_not_break_includes(workdir):
    # gin's package-resource reader would import ./runs as a namespace package and crash.
    for name in ("runs", "models", "data", "mesh", "quickstart"):
        (workdir / "work" / name / "something").mkdir(parents=True)
    code, stdout, stderr = finish(run_cli(workdir, "params",
                                          "--gin_file=quickstart/t5_span_corruption.gin"))
    assert code == 0, stderr
    assert stdout.strip().splitlines()[-1].startswith("total_params: ")


# ----------------------------------------------------------------- unused macros
def test_misspelt_macro_flag_fails_before_training(workdir):
    message = assert_config_error(workdir, "train", "--gin_file=quickstart/decoder_lm.gin",
                                  *train_flags(workdir), "--gin.TRAIN_STEPZ=3")
    assert message == ("--gin.TRAIN_STEPZ=3: macro TRAIN_STEPZ is bound but never used "
                       "(did you mean TRAIN_STEPS?)")


def test_misspelt_macro_flag_in_process(gin_config, capsys):
    from t5x_lite import main

    code = main.main(["params", "--gin_file=quickstart/decoder_lm.gin", "--gin.TRAIN_STEPZ=3"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (f"{CONFIG_ERROR}--gin.TRAIN_STEPZ=3: macro TRAIN_STEPZ is bound but never "
                   "used (did you mean TRAIN_STEPS?)\n")


def test_unused_macro_in_a_gin_file_names_file_and_line(gin_config, tmp_path):
    from t5x_lite import config

    (tmp_path / "user.gin").write_text("include 'quickstart/decoder_lm.gin'\n\n"
                                       "BATCH_SIZE = 4\nBACH_SIZE = 2\n")
    with pytest.raises(config.ConfigError, match=r"^user\.gin:4: macro BACH_SIZE is bound but "
                                                 r"never used \(did you mean BATCH_SIZE\?\)$"):
        gin_config(["user.gin"], [])


def test_macro_that_only_this_command_ignores_is_an_error_on_the_command_line(gin_config):
    from t5x_lite import cli_wiring, config

    # `params` counts the model: a batch size set for it is a mistake, not a typo.
    with pytest.raises(config.ConfigError, match=r"^--gin\.BATCH_SIZE=4: macro BATCH_SIZE is "
                                                 r"bound but never used$"):
        gin_config(["models/decoder_tiny.gin"], [cli_wiring.PARAMS_WIRING, "BATCH_SIZE = 4"])
    # ...and so is a data file's EVAL_DATA given as a flag to a command that reads no data.
    with pytest.raises(config.ConfigError, match=r"^--gin\.EVAL_DATA=None: macro EVAL_DATA"):
        gin_config(["models/decoder_tiny.gin"], [cli_wiring.PARAMS_WIRING, "EVAL_DATA = None"])


def test_packaged_compositions_use_every_macro_they_bind(gin_config):
    """Model, data and run files define macros for each other and for the CLI's commands
    (config.INTERFACE_MACROS): a command that reads only some of them is not an error."""
    from t5x_lite import cli_wiring, config

    wirings = {"train": [], "params": [cli_wiring.PARAMS_WIRING],
               "export": [cli_wiring.EXPORT_WIRING],
               **{command: [wiring] for command, wiring in cli_wiring.WIRING.items()}}
    c4_flags = ["DATA_DIR = '/tmp/data'", "SENTENCEPIECE_MODEL = 'x'"]  # required by c4.gin
    # A classifier's run file serves `train_classifier` and `eval --tasks` (checked below).
    classifiers = {"bert_classify.gin"}
    compositions = [[f"quickstart/{name}"] for name in
                    os.listdir(os.path.join(config.PACKAGE_GIN_DIR, "quickstart"))
                    if name not in classifiers]
    for model in ("decoder_tiny", "t5_1_1_tiny", "llama_1b", "gpt3_125m"):
        run = "runs/pretrain_t5.gin" if model.startswith("t5") else "runs/pretrain_decoder.gin"
        for data in ("data/python_docs.gin", "data/c4.gin"):
            compositions += [[f"models/{model}.gin", data], [f"models/{model}.gin", data, run]]
    for files in compositions:
        complete = len(files) != 2  # a model and a data file, no run file: no train or eval
        for command, wiring in wirings.items():
            if not complete and command in ("train", "eval"):
                continue
            flags = ["MODEL_DIR = '/tmp/run'"] + (c4_flags if "data/c4.gin" in files else [])
            gin_config(files, wiring + flags)  # raises ConfigError on a false alarm
    for name in ("instruction_tune_decoder.gin", "instruction_tune_t5.gin"):
        for wiring in (cli_wiring.MIXTURE_WIRING, cli_wiring.TASK_EVAL_WIRING):
            gin_config([f"quickstart/{name}"], [wiring])
    for name in classifiers:
        for wiring in ([], [cli_wiring.TASK_EVAL_WIRING], [cli_wiring.PARAMS_WIRING]):
            gin_config([f"quickstart/{name}"], wiring)

"""Two CPU processes (4 fake devices each, jax.distributed on localhost, gloo collectives) run
the real CLI: training matches the single-process 8-device run on an (8,1,1) and a (2,2,2)
mesh, both processes resume from the one checkpoint they wrote together, and eval and infer
work across the two processes. Plus the start-up logic of `t5x_lite.distributed`."""
import json
import os
import socket
import subprocess
import sys

import jax
import pytest

from t5x_lite import distributed, main as cli

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The quickstart decoder, narrowed to one small layer, on a run small enough for CPU; decay
# fixed so that a 4-step run resumed to 6 steps follows the schedule of 6 steps straight.
OVERRIDES = ["--gin.BATCH_SIZE=8", "--gin.DATA_SHARDS=2", "--gin.SEQUENCE_LENGTH=32", "--gin.LOG_EVERY=1",
             "--gin.CHECKPOINT_EVERY=2", "--gin.EVAL_EVERY=4", "--gin.EVAL_BATCHES=1",
             "--gin.WARMUP_STEPS=2", "--gin.optimizers.warmup_cosine.decay_steps=6",
             "--gin.decoder.DecoderConfig.embed_dim=32", "--gin.decoder.DecoderConfig.num_layers=1",
             "--gin.decoder.DecoderConfig.mlp_dim=64"]
PROMPTS = [{"inputs": "Return the number of", "targets": " items"},
           {"inputs": "The json module", "targets": " encodes"}]
NEW_TOKENS = 4
TIMEOUT_S = 420   # generous: the job takes about a minute on an idle 2-core machine


def train_argv(data_dir, model_dir, mesh, steps):
    return ["train", "--gin_file=quickstart/decoder_lm.gin", *OVERRIDES,
            f"--gin.TRAIN_STEPS={steps}", f"--gin.MESH_SHAPE={mesh}",
            f"--gin.DATA_DIR='{data_dir}'", f"--gin.MODEL_DIR='{model_dir}'"]


def inference_argv(command, data_dir, model_dir, mesh, input_path, output_path):
    function = "infer" if command == "infer" else "evaluate"
    return [command, "--gin_file=quickstart/decoder_lm.gin", *OVERRIDES,
            f"--gin.DATA_DIR='{data_dir}'", f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.inference.{function}.mesh_shape={mesh}",
            f"--gin.inference.{function}.max_new_tokens={NEW_TOKENS}",
            *(["--gin.inference.evaluate.eval_batches=1"] if command == "eval" else []),
            f"--input={input_path}", f"--output={output_path}"]


def metrics(model_dir, key):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r[key] for r in records if key in r}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_processes(commands, root):
    """Runs the commands in 2 worker processes; returns each process's results (a worker
    stops at its first failing command)."""
    port = free_port()
    with open(root / "commands.json", "w") as f:
        json.dump(commands, f)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    workers, logs = [], []
    for process_id in range(2):
        logs.append(open(root / f"worker{process_id}.log", "w"))
        workers.append(subprocess.Popen(
            [sys.executable, WORKER, str(process_id), str(port), "2", str(root / "commands.json"),
             str(root / f"results{process_id}.json")],
            cwd=root, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
    try:
        for worker in workers:
            worker.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()
    paths = [root / f"results{process_id}.json" for process_id in range(2)]
    return [json.loads(path.read_text()) if path.exists() else [] for path in paths]


def succeeded(job, *names):
    """Fails the test, with the worker's log, unless both processes ran these commands."""
    root, _, _, results = job
    for process_id, done in enumerate(results):
        ran = {r["name"]: r["rc"] for r in done}
        if any(ran.get(name) != 0 for name in names):
            tail = (root / f"worker{process_id}.log").read_text()[-5000:]
            pytest.fail(f"process {process_id}: {ran} (want {names} to exit 0):\n{tail}")
    return [{r["name"]: r for r in done} for done in results]


@pytest.fixture(scope="module")
def job(tmp_path_factory, data_dir):
    """The single-process reference (in this 8-device pytest process), then the 2-process
    job: 4 steps on (8,1,1), resumed to 6 on (2,2,2), infer and eval."""
    root = tmp_path_factory.mktemp("multihost")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    reference, run = root / "reference", root / "run"
    assert cli.main(train_argv(data_dir, reference, "(8,1,1)", steps=6)) == 0
    assert cli.main(inference_argv("infer", data_dir, reference, "(1,1,1)", prompts,
                                   root / "reference.jsonl")) == 0
    commands = {
        "train": train_argv(data_dir, run, "(8,1,1)", steps=4),
        "resume": train_argv(data_dir, run, "(2,2,2)", steps=6),
        "infer": inference_argv("infer", data_dir, run, "(2,-1,1)", prompts,
                                root / "predictions.jsonl"),
        "eval": inference_argv("eval", data_dir, run, "(2,2,2)", prompts, root / "eval.jsonl"),
    }
    return root, reference, run, run_two_processes(commands, root)


def test_losses_on_two_meshes_match_one_process(job):
    """With DATA_SHARDS fixed, each piece of the batch reads its own records whatever the mesh
    and the process count: two processes train on exactly the batches one process does."""
    _, reference, run, _ = job
    succeeded(job, "train", "resume")
    expected = metrics(reference, "train/loss")
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]
    # Steps 1-4 on (8,1,1); 5-6 on (2,2,2) after both processes restored step 4.
    assert metrics(run, "train/loss") == pytest.approx(expected, rel=1e-5)
    assert metrics(run, "eval/loss") == pytest.approx(metrics(reference, "eval/loss"), rel=1e-5)


def test_one_checkpoint_written_by_both_processes_and_resumed(job):
    """One set of step directories (not one per process); the loss test shows both
    processes restored step 4 (a process starting afresh would change steps 5-6)."""
    root, _, run, _ = job
    succeeded(job, "train", "resume")
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4", "6"]
    assert "resumed from checkpoint at step 4" in (root / "worker0.log").read_text()


def test_infer_runs_on_two_processes(job):
    root, *_ = job
    succeeded(job, "infer")
    predictions = [json.loads(line) for line in open(root / "predictions.jsonl")]
    expected = [json.loads(line) for line in open(root / "reference.jsonl")]
    assert [p["inputs"] for p in predictions] == [p["inputs"] for p in PROMPTS]
    # Same checkpoint as the reference's up to float noise: the same greedy tokens.
    assert [p["tokens"] for p in predictions] == [p["tokens"] for p in expected]
    assert [s for p in predictions for s in p["scores"]] == pytest.approx(
        [s for p in expected for s in p["scores"]], rel=1e-4)


def test_eval_runs_on_two_processes(job):
    _, reference, _, _ = job
    for process_results in succeeded(job, "eval"):
        stdout = process_results["eval"]["stdout"]
        evaluation = json.loads(stdout[stdout.index("{"):])
        # The same cross entropy as training's evaluation of the same checkpoint.
        assert evaluation["validation/loss"] == pytest.approx(
            metrics(reference, "eval/loss")[6], rel=1e-4)
        assert {"exact_match", "bleu", "rouge1"} <= set(evaluation)


@pytest.fixture
def calls(monkeypatch):
    """Records jax.distributed.initialize calls instead of joining a job."""
    seen = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: seen.append(kwargs))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: bool(seen))
    return seen


def test_initialize_with_flags(calls):
    assert distributed.initialize("127.0.0.1:1234", 2, 1, environ={})
    assert calls == [{"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
                      "process_id": 1}]


def test_initialize_only_when_asked_or_on_a_cluster(calls):
    no_tpu = dict(tpu_chips_attached=lambda: False)
    assert not distributed.cluster_detected({}, **no_tpu)
    assert not distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "localhost"}, **no_tpu)
    assert distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "w0,w1"}, **no_tpu)
    assert distributed.cluster_detected({"MEGASCALE_COORDINATOR_ADDRESS": "w0"}, **no_tpu)
    assert distributed.cluster_detected({}, tpu_chips_attached=lambda: True)
    assert not distributed.cluster_detected({"TPU_SKIP_MDS_QUERY": "1"},
                                            tpu_chips_attached=lambda: True)
    assert not distributed.initialize(environ={"TPU_SKIP_MDS_QUERY": "1"})
    assert not distributed.initialize(mode="off", environ={"TPU_WORKER_HOSTNAMES": "w0,w1"})
    assert calls == []
    assert distributed.initialize(environ={"TPU_WORKER_HOSTNAMES": "w0,w1"})
    assert calls == [{}]   # jax finds the coordinator itself


def test_initialize_errors_and_repeats(calls):
    with pytest.raises(ValueError, match="contradicts num_processes"):
        distributed.initialize(num_processes=2, mode="off")
    with pytest.raises(ValueError, match="mode must be one of"):
        distributed.initialize(mode="yes")
    distributed.initialize(mode="on")
    distributed.initialize(mode="on")   # already part of a job: kept
    assert calls == [{}]
    with pytest.raises(ValueError, match="already runs 1 processes, not num_processes=2"):
        distributed.initialize("127.0.0.1:1234", 2, 0)


def test_cli_initializes_before_running_the_command(calls, tmp_path):
    """Flags reach jax.distributed.initialize before gin builds anything (here: a config error
    after initialization)."""
    rc = cli.main(["train", "--coordinator_address=127.0.0.1:9", "--num_processes=1",
                   "--process_id=0", f"--gin_file={tmp_path / 'missing.gin'}"])
    assert rc != 0
    assert calls == [{"coordinator_address": "127.0.0.1:9", "num_processes": 1,
                      "process_id": 0}]
    calls.clear()
    cli.main(["params", f"--gin_file={tmp_path / 'missing.gin'}"])
    assert calls == []
    with pytest.raises(SystemExit):
        cli.main(["params", "--num_processes=2"])   # only train, infer, score, eval take them

"""The loop skeleton (`train_loop.Run`) runs a job that is not pretraining: its own state, step
function, batches and evaluation, with resume, logging, evaluation, checkpoints and the NaN stop
coming from the skeleton alone. Here: least squares fitted by SGD on a grain dataset."""
import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5x_lite import train_loop

TRUE_W = np.asarray([1.5, -2.0, 0.5], np.float32)
OPTIMIZER = optax.sgd(0.1)


def batches():
    """An endless, checkpointable stream of (x, y) batches with y = x·w."""
    def example(index):
        x = np.random.default_rng(index).normal(size=(4, 3)).astype(np.float32)
        return {"x": x, "y": x @ TRUE_W}

    return iter(grain.MapDataset.range(10**6).map(example).to_iter_dataset())


def initial_state():
    params = {"w": jnp.zeros(3, jnp.float32)}
    return {"params": params, "opt": OPTIMIZER.init(params), "step": jnp.zeros((), jnp.int32)}


def loss_fn(params, batch):
    return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)


@jax.jit
def step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
    updates, opt = OPTIMIZER.update(grads, state["opt"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt": opt, "step": state["step"] + 1}, {"loss": loss}


def run_job(model_dir, steps, step_fn=step):
    run = train_loop.Run.open(str(model_dir), train_loop.Schedule(
        steps, log_every=2, eval_every=4, checkpoint_every=4, progress_bar=False))
    data = batches()
    state, start = run.restore_or_init(jax.eval_shape(initial_state), initial_state, data)
    evaluate = lambda s: {"loss": float(loss_fn(s["params"], next(batches())))}
    last = run.loop(state, start, step_fn, lambda: next(data), data, evaluate=evaluate)
    return start, last


def records(model_dir):
    return [json.loads(line) for line in open(model_dir / "metrics.jsonl")]


def test_a_job_of_its_own_logs_evaluates_checkpoints_and_resumes(tmp_path):
    start, last = run_job(tmp_path, 8)
    assert start == 0 and last["eval/loss"] < 0.5 * records(tmp_path)[0]["train/loss"]
    logged = [r["step"] for r in records(tmp_path) if "train/loss" in r]
    assert logged == [2, 4, 6, 8]
    assert (tmp_path / "loss.png").exists()
    saved = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert {"4", "8"} <= saved and not saved & {"2", "6"}  # orbax also keeps the first step

    # A longer schedule resumes at step 8 with the data stream where it was: the same losses
    # as one uninterrupted run of 12 steps.
    start, _ = run_job(tmp_path, 12)
    assert start == 8
    straight = tmp_path / "straight"
    run_job(straight, 12)
    resumed = {r["step"]: r["train/loss"] for r in records(tmp_path) if "train/loss" in r}
    expected = {r["step"]: r["train/loss"] for r in records(straight) if "train/loss" in r}
    assert resumed == pytest.approx(expected, rel=1e-6)


def test_a_non_finite_loss_stops_the_job_and_names_the_good_checkpoint(tmp_path):
    def breaks_at_step_6(state, batch):
        state, metrics = step(state, batch)
        return state, {"loss": jnp.where(state["step"] == 6, jnp.nan, metrics["loss"])}

    with pytest.raises(train_loop.NonFiniteLossError,
                       match=r"loss is nan at step 6; training stopped. The last good "
                             r"checkpoint is step 4 in "):
        run_job(tmp_path, 12, breaks_at_step_6)
    saved = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert "4" in saved and "6" not in saved  # a NaN never reaches a checkpoint


def test_the_loop_reads_device_values_only_when_it_logs_evaluates_or_saves(tmp_path,
                                                                          monkeypatch):
    """No per-step `device_get`: the NaN watch folds each step's loss on the device and is
    read with the log (steps 2, 4, 6, 8 here: evaluations and saves fall on them too)."""
    reads = []
    real_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: reads.append(x) or real_get(x))
    counted = []

    def counting_step(state, batch):
        counted.append(len(reads))
        return step(state, batch)

    run_job(tmp_path, 8, counting_step)
    # between[i]: reads after step i + 1. Step 1 is saved (orbax keeps a first checkpoint),
    # steps 2, 4, 6 log (the NaN record, then the metrics); steps 3, 5, 7 read nothing.
    between = [b - a for a, b in zip(counted, counted[1:])]
    assert between[2::2] == [0, 0, 0] and all(between[:2] + between[3::2]), between

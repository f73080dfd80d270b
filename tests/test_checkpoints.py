"""Restoring checkpoints: a changed configuration is a clear error that touches nothing on
disk; only a provably damaged step is set aside (and the one before it used), also when only
one of two processes finds the damage."""
import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import grain
import numpy as np
import pytest

from t5x_lite import checkpoints, optimizers, partitioning
from t5x_lite.models import decoder
from t5x_lite.trainer import Trainer

CONFIG = dict(vocab_size=256, embed_dim=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64)
BATCH = {name: ((8, 32), np.float32 if name == "decoder_loss_weights" else np.int32)
         for name in ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
                      "decoder_positions", "decoder_loss_weights")}


def make_trainer(mesh_shape=(2, 2, 2), **overrides):
    schedule = optimizers.constant(1e-2)
    return Trainer(decoder.DecoderLM(decoder.DecoderConfig(**dict(CONFIG, **overrides))),
                   optimizers.adamw(learning_rate=schedule), schedule,
                   partitioning.make_mesh(mesh_shape), partitioning.DEFAULT_RULES,
                   batch_shapes=BATCH)


def data_iterator():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint directory with steps 1 and 2; their iterators next yield 1 and 2."""
    directory = tmp_path_factory.mktemp("saved") / "checkpoints"
    state, iterator = make_trainer().create_state(0), data_iterator()
    checkpointer = checkpoints.Checkpointer(str(directory), save_every=1)
    for step in (1, 2):
        next(iterator)
        checkpointer.save(step, state, iterator)
    checkpointer.close()
    return directory


@pytest.fixture
def directory(saved, tmp_path):
    """A fresh copy of `saved` for a test to damage."""
    copy = tmp_path / "checkpoints"
    shutil.copytree(saved, copy)
    return copy


def snapshot(directory):
    """Every file under `directory` with its size and modification time."""
    return {path: (os.path.getsize(path), os.path.getmtime(path))
            for path in glob.glob(f"{directory}/**", recursive=True) if os.path.isfile(path)}


def restore(directory, trainer=None, iterator=None):
    abstract_state = (trainer or make_trainer()).abstract_state_with_shardings()
    checkpointer = checkpoints.Checkpointer(str(directory), save_every=1)
    try:
        return checkpointer.restore_latest(abstract_state, iterator or data_iterator())
    finally:
        checkpointer.close()


def test_intact_checkpoint_restores_onto_another_mesh(directory):
    iterator = data_iterator()
    step, state = restore(directory, make_trainer(mesh_shape=(8, 1, 1)), iterator)
    assert step == 2 and int(state.step) == 0
    assert next(iterator) == 2


def test_changed_shapes_are_a_clear_error_and_touch_nothing(directory):
    before = snapshot(directory)
    with pytest.raises(checkpoints.CheckpointMismatchError) as raised:
        restore(directory, make_trainer(embed_dim=48))
    message = str(raised.value)
    assert f"step 2 in {directory}" in message
    assert "params/final_norm/scale: saved (32,) float32, this run (48,) float32" in message
    assert snapshot(directory) == before
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_changed_optimizer_is_a_clear_error(directory):
    schedule = optimizers.constant(1e-2)
    trainer = Trainer(decoder.DecoderLM(decoder.DecoderConfig(**CONFIG)),
                      optimizers.adafactor(learning_rate=schedule), schedule,
                      partitioning.make_mesh((2, 2, 2)), partitioning.DEFAULT_RULES,
                      batch_shapes=BATCH)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="not in the checkpoint"):
        restore(directory, trainer)
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_changed_process_count_is_a_clear_error(directory):
    # What a 2-process job writes: one iterator file per process.
    for step in ("1", "2"):
        data = directory / step / "data"
        (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
        shutil.copy(data / "process_0-of-2.json", data / "process_1-of-2.json")
    before = snapshot(directory)
    with pytest.raises(checkpoints.CheckpointMismatchError) as raised:
        restore(directory)
    message = str(raised.value)
    assert f"step 2 in {directory}" in message
    assert "written by 2 process(es), this run has 1" in message
    assert snapshot(directory) == before


def test_changed_data_layout_is_a_clear_error(directory):
    # A pipeline of two streams (two batch pieces) where the checkpoint holds one.
    two_pieces = iter(grain.experimental.ZipIterDataset(
        [grain.MapDataset.range(100)[piece::2].to_iter_dataset() for piece in range(2)]))
    before = snapshot(directory)
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match=r"step 2 in .*data iterator state does not fit this run's input "
                             r"pipeline \(state: saved keys \['next_index'\], this run "
                             r"\['parents'\]"):
        restore(directory, iterator=two_pieces)
    assert snapshot(directory) == before


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(3)


def _largest(pattern):
    return max(glob.glob(pattern), key=os.path.getsize)


DAMAGE = {
    "truncated array chunk": lambda step: _truncate(_largest(f"{step}/state/ocdbt.process_*/d/*")),
    "truncated iterator file": lambda step: _truncate(step / "data" / "process_0-of-1.json"),
    "missing tree metadata": lambda step: os.remove(step / "state" / "_METADATA"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_step_is_set_aside_for_the_one_before(directory, damage, caplog):
    DAMAGE[damage](directory / "2")
    iterator = data_iterator()
    with caplog.at_level(logging.WARNING, logger="t5x_lite.checkpoints"):
        step, _ = restore(directory, iterator=iterator)
    assert step == 1 and next(iterator) == 1  # step 1's iterator state too
    assert "checkpoint at step 2 could not be restored (damaged: " in caplog.text
    assert f"set aside the damaged checkpoint at step 2 as {directory / '2.unreadable'}" \
        in caplog.text
    assert sorted(os.listdir(directory)) == ["1", "2.unreadable"]


def test_every_step_damaged_is_an_error_and_renames_nothing(directory):
    for step in ("1", "2"):
        DAMAGE["truncated iterator file"](directory / step)
    with pytest.raises(checkpoints.CheckpointRestoreError, match="every checkpoint in .* is "
                                                                 "damaged \\(steps 2, 1"):
        restore(directory)
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_failure_that_proves_no_damage_leaves_the_step_in_place(directory, monkeypatch):
    def unavailable(*args, **kwargs):  # what tensorstore says when a bucket does not answer
        raise ValueError('UNAVAILABLE: Error reading "params.lm_head.kernel/0.0" in OCDBT '
                         'database at "gs://bucket/run/checkpoints/2/state/"')

    monkeypatch.setattr("orbax.checkpoint.StandardCheckpointHandler.restore", unavailable)
    with pytest.raises(checkpoints.CheckpointRestoreError,
                       match="step 2 .* left in place .*UNAVAILABLE"):
        restore(directory)
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_paths_file_urls_and_relative(saved, tmp_path, monkeypatch):
    trainer = make_trainer()
    assert checkpoints.Checkpointer(f"file://{saved}", save_every=1).directory == saved
    monkeypatch.chdir(saved.parent)
    assert checkpoints.Checkpointer("checkpoints", save_every=1).directory == saved
    step, params = checkpoints.restore_train_params(f"file://{saved}", trainer.abstract_params)
    assert step == 2 and isinstance(params["final_norm"]["scale"], np.ndarray)
    assert checkpoints.restore_train_params(str(tmp_path / "none"), trainer.abstract_params) \
        is None


def test_params_of_another_model_are_a_clear_error(saved):
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match=r"step 2 in .*final_norm/scale: saved \(32,\) float32, this run "
                             r"\(48,\)"):
        checkpoints.restore_train_params(str(saved), make_trainer(embed_dim=48).abstract_params)


def test_training_on_with_a_changed_model_is_an_error_not_a_restart(tmp_path, data_dir,
                                                                     vocabulary):
    from t5x_lite import train_loop
    from t5x_lite.data import pipeline

    def train(**overrides):
        config = decoder.DecoderConfig(**dict(CONFIG, vocab_size=8320, **overrides))
        return train_loop.train(
            model_dir=str(tmp_path), model=decoder.DecoderLM(config), vocabulary=vocabulary,
            train_data=pipeline.DatasetConfig(data_dir=data_dir), optimizer=optimizers.adamw,
            learning_rate=optimizers.constant(1e-3), train_steps=2, batch_size=8,
            feature_lengths={"targets": 32}, mesh_shape=(1, 1, 1), checkpoint_every=2,
            log_every=1, progress_bar=False, peak_flops_per_device=1e12)

    train()
    before = snapshot(tmp_path / "checkpoints")
    metrics = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(checkpoints.CheckpointMismatchError, match="step 2 in .*checkpoints"):
        train(embed_dim=48)
    assert snapshot(tmp_path / "checkpoints") == before
    assert (tmp_path / "metrics.jsonl").read_text() == metrics  # no step was trained


# ------------------------------------------------------------------------- two processes
def _two_process_worker(process_id: int, port: int, directory: str) -> None:
    """One process of the test below: both save steps 1 and 2 of one array sharded over the
    8 devices of the 2 processes, process 0 truncates process 1's shards of step 2, both
    restore and print what they got as JSON."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("x",)), PartitionSpec("x"))
    values = {step: np.random.default_rng(step).standard_normal((1024, 64)).astype(np.float32)
              for step in (1, 2)}  # random: zstd cannot shrink a shard below a file's size
    checkpointer = checkpoints.Checkpointer(directory, save_every=1)
    iterator = data_iterator()
    for step in (1, 2):
        next(iterator)
        array = jax.make_array_from_callback((1024, 64), sharding,
                                             lambda index, step=step: values[step][index])
        checkpointer.save(step, {"w": array}, iterator)
    checkpointer.close()
    checkpoints.ocp.multihost.sync_global_processes("test_saved")
    if process_id == 0:
        for path in glob.glob(f"{directory}/2/state/ocdbt.process_1/d/*"):
            _truncate(path)
    checkpoints.ocp.multihost.sync_global_processes("test_damaged")
    checkpointer, iterator = checkpoints.Checkpointer(directory, save_every=1), data_iterator()
    abstract = {"w": jax.ShapeDtypeStruct((1024, 64), np.float32, sharding=sharding)}
    step, state = checkpointer.restore_latest(abstract, iterator)
    whole = jax.experimental.multihost_utils.process_allgather(state["w"], tiled=True)
    checkpointer.close()
    print(json.dumps({"step": step, "next": int(next(iterator)),
                      "exact": bool(np.array_equal(whole, values[step])),
                      "listing": sorted(os.listdir(directory))}))


def test_two_processes_agree_on_damage_only_one_of_them_sees(tmp_path):
    """Process 1 alone reads the damaged shards: both must still fall back to step 1 (a
    process restoring alone would leave the other waiting in a collective)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                           os.environ.get("PYTHONPATH", "")]))
    workers = [subprocess.Popen([sys.executable, __file__, str(i), str(port), str(tmp_path)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(2)]
    try:
        outputs = [worker.communicate(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
        assert json.loads(stdout.splitlines()[-1]) == {
            "step": 1, "next": 1, "exact": True, "listing": ["1", "2.unreadable"]}
    damaged_1, damaged_0 = outputs[1][1], outputs[0][1]
    assert "checkpoint at step 2 could not be restored (damaged: " in damaged_1
    assert "OUT_OF_RANGE" in damaged_1
    assert "another process could not restore step 2" in damaged_0
    assert "set aside the damaged checkpoint at step 2" in damaged_0


if __name__ == "__main__":
    _two_process_worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

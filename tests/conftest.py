"""Test setup: 8 fake CPU devices (set before jax is imported), a compilation cache for the
session, and the shared corpus."""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same tiny programs (and multi-process tests compile them once per
# process): XLA's persistent cache, fresh for each session (so every run starts cold, as CI
# does) and inherited by the worker processes, compiles each once (about 30% off
# tests/test_training.py).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="t5x_lite_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax  # noqa: E402
import pytest  # noqa: E402

assert jax.device_count() == 8, "XLA_FLAGS must be set before jax is imported"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The python_docs corpus and its default vocabulary, built once per test session."""
    from t5x_lite.data import python_docs

    path = tmp_path_factory.getbasetemp() / "python_docs_data"
    python_docs.prepare(str(path))
    return str(path)


@pytest.fixture(scope="session")
def vocabulary(data_dir):
    from t5x_lite.data import pipeline

    return pipeline.load_vocabulary(
        data_dir, train_data=pipeline.DatasetConfig(data_dir=data_dir)
    )

"""Test setup: 8 fake CPU devices (set before jax is imported) and the shared corpus."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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

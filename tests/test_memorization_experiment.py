"""experiments/memorization/run.py: the canaries are deterministic and injected as asked."""
import importlib.util
import os
import types

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "experiments", "memorization", "run.py")


@pytest.fixture(scope="module")
def experiment():
    spec = importlib.util.spec_from_file_location("memorization_experiment", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_canaries_are_deterministic_and_distinct(experiment):
    canaries = experiment.make_canaries()
    assert canaries == experiment.make_canaries()
    assert canaries != experiment.make_canaries(seed=7)
    assert len({c["text"] for c in canaries}) == len(canaries)
    counts = [c["copies"] for c in canaries if c["kind"] == "canary"]
    assert sorted(set(counts)) == list(experiment.DUPLICATES)
    assert all(counts.count(d) == experiment.PER_COUNT for d in experiment.DUPLICATES)
    for c in canaries:
        if c["kind"] != "canary":
            assert c["text"].startswith(c["prompt"] + " " + c["secret"])


def test_pii_canaries_are_what_the_scrubber_finds(experiment):
    long_enough = types.SimpleNamespace(encode=lambda text: [0] * 100)
    experiment.check_canaries(experiment.make_canaries(), long_enough)  # raises on a miss


def test_inject_puts_each_copy_first_in_its_own_document(experiment):
    canaries = experiment.make_canaries()
    total = sum(c["copies"] for c in canaries)
    texts = [f"document {i} text" for i in range(total + 50)]
    out = experiment.inject(texts, canaries)
    assert out == experiment.inject(texts, canaries)
    first_lines = [t.split("\n")[0] for t in out]
    for c in canaries:
        assert sum(t.count(c["text"]) for t in out) == c["copies"]
        assert first_lines.count(c["text"]) == c["copies"]
    changed = [i for i, (a, b) in enumerate(zip(texts, out)) if a != b]
    assert len(changed) == total  # one canary copy per host document
    assert all(out[i].endswith(texts[i]) for i in changed)

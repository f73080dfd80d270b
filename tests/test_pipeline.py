"""Input pipeline: determinism, per-process sharding, packing, and bad-record accounting."""
import grain
import numpy as np
import pytest

from t5x_lite.data import objectives, pipeline


def make_config(records):
    config = pipeline.DatasetConfig(name="in_memory")
    object.__setattr__(config, "source", lambda: records)
    return config


def take(dataset, n):
    iterator = iter(dataset)
    return [next(iterator) for _ in range(n)]


def test_same_seed_same_batches_different_seed_different(data_dir, vocabulary):
    config = pipeline.DatasetConfig(data_dir=data_dir)
    kwargs = dict(feature_lengths={'targets': 64}, batch_size=4)
    a = take(pipeline.make_dataset(config, vocabulary, seed=1, **kwargs)[0], 3)
    b = take(pipeline.make_dataset(config, vocabulary, seed=1, **kwargs)[0], 3)
    c = take(pipeline.make_dataset(config, vocabulary, seed=2, **kwargs)[0], 3)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a[0]["decoder_target_tokens"], c[0]["decoder_target_tokens"])


def test_processes_read_disjoint_records(data_dir, vocabulary):
    config = pipeline.DatasetConfig(split="validation", data_dir=data_dir)
    seen = []
    for process in range(3):
        dataset, _ = pipeline.make_dataset(
            config, vocabulary, feature_lengths={'targets': 128}, batch_size=3, shuffle=False, repeat=False,
            process_index=process, process_count=3,
        )
        rows = [row for batch in dataset for row in batch["decoder_target_tokens"]]
        docs = set()
        for row in rows:
            text = vocabulary.decode(row)  # decode stops at the first EOS: first doc of a row
            docs.add(text)
        seen.append(docs)
    assert all(seen)
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_packed_features_are_consistent(data_dir, vocabulary):
    dataset, _ = pipeline.make_dataset(
        pipeline.DatasetConfig(data_dir=data_dir), vocabulary, feature_lengths={'targets': 128}, batch_size=4
    )
    batch = next(iter(dataset))
    assert batch["decoder_target_tokens"].shape == (4, 128)
    segments = batch["decoder_segment_ids"]
    targets = batch["decoder_target_tokens"]
    assert segments.max() > 1, "rows should hold several packed documents"
    for row in range(4):
        for segment in set(segments[row][segments[row] > 0]):
            where = np.flatnonzero(segments[row] == segment)
            np.testing.assert_array_equal(batch["decoder_positions"][row][where],
                                          np.arange(len(where)))
            inputs = batch["decoder_input_tokens"][row][where]
            assert inputs[0] == 0
            np.testing.assert_array_equal(inputs[1:], targets[row][where][:-1])
    np.testing.assert_array_equal(batch["decoder_loss_weights"], (segments > 0) & (targets > 0))


def test_bad_records_are_skipped_and_counted(vocabulary):
    long_text = "word " * 2000
    records = [
        {"text": b"A good record about the open() builtin."},
        {"text": b""},
        {"text": b"   \n "},
        {"text": b"\xff\xfe not utf-8 \xc3"},
        {"other_field": b"no text here"},
        {"text": long_text.encode()},
        {"text": "Another good one, already a str.".encode()},
    ]
    dataset, stats = pipeline.make_dataset(
        make_config(records), vocabulary, feature_lengths={'targets': 64}, batch_size=1, shuffle=False,
        repeat=False, max_chunks_per_document=4,
    )
    rows = list(dataset)
    counts = stats.snapshot()
    assert counts == {"records": 7, "skipped_empty": 2, "skipped_non_utf8": 1,
                      "skipped_malformed": 1, "split_long": 1, "truncated": 0}
    texts = " ".join(vocabulary.decode(r["decoder_target_tokens"][0]) for r in rows)
    assert "open() builtin" in texts and "already a str" in texts
    assert sum(int((r["decoder_segment_ids"] > 0).sum()) for r in rows) > 4 * 64 - 1


def test_autoregressive_inputs_restart_per_segment():
    targets = np.array([[5, 6, 7, 8, 9, 0]])
    segments = np.array([[1, 1, 1, 2, 2, 0]])
    np.testing.assert_array_equal(
        objectives.autoregressive_inputs(targets, segments), [[0, 5, 6, 0, 8, 0]]
    )


def test_causal_lm_appends_eos():
    out = objectives.CausalLM(eos_id=1)(np.array([4, 5, 6]), 3)
    np.testing.assert_array_equal(out["targets"], [4, 5, 6, 1])


def test_unigram_entropy_matches_token_frequencies(vocabulary):
    texts = ["the cat sat on the mat", "the dog", "a cat"]
    tokens = [t for text in texts for t in vocabulary.encode(text) + [vocabulary.eos_id]]
    _, counts = np.unique(tokens, return_counts=True)
    probs = counts / counts.sum()
    expected = -(probs * np.log(probs)).sum()
    assert pipeline.unigram_entropy(vocabulary, texts) == pytest.approx(expected, rel=1e-9)

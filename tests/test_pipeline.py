"""Input pipeline: determinism, sharding by batch shard, T5's concatenate-then-split order,
per-example noise seeds, equal-length evaluation, packing, and bad-record accounting."""
import functools

import grain
import numpy as np
import pytest

from t5x_lite.data import objectives, pipeline
from t5x_lite.models.model_format import ModelFormat

ENC_DEC = ModelFormat(architecture="encoder_decoder")


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


def test_shards_read_disjoint_records(data_dir, vocabulary):
    config = pipeline.DatasetConfig(split="validation", data_dir=data_dir)
    seen = []
    for process in range(3):
        dataset, _ = pipeline.make_dataset(
            config, vocabulary, feature_lengths={'targets': 128}, batch_size=3, shuffle=False, repeat=False,
            shard_index=process, shard_count=3,
        )
        rows = [row for batch in dataset for row, segments in
                zip(batch["decoder_target_tokens"], batch["decoder_segment_ids"])
                if segments.any()]  # the last batch is padded with empty rows
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
                      "skipped_malformed": 1, "split_long": 1, "truncated": 0,
                      "skipped_by_preprocessor": 0, "skipped_no_exemplar": 0,
                      "skipped_short_pair": 0}
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


# ------------------------------------------------------------------ T5's span corruption order
def span_corruption_dataset(data_dir, vocabulary, inputs_length=128, **kwargs):
    _, targets_length = objectives.random_spans_helper(inputs_length)
    options = dict(feature_lengths={"inputs": inputs_length, "targets": targets_length},
                   batch_size=8, model_format=ENC_DEC, seed=0,
                   objective=objectives.SpanCorruption())
    options.update(kwargs)
    return pipeline.make_dataset(pipeline.DatasetConfig(data_dir=data_dir), vocabulary,
                                 **options)[0]


def noise_statistics(dataset, vocabulary, rows):
    """(noise tokens / raw tokens, noise tokens / noise spans) over `rows` packed rows: raw
    tokens are the real tokens of inputs and targets, noise tokens those of the targets, and
    each sentinel in the targets opens one span."""
    first_sentinel = vocabulary.vocab_size - vocabulary.extra_ids
    iterator, noise, raw, spans, seen = iter(dataset), 0, 0, 0, 0
    while seen < rows:
        batch = next(iterator)
        seen += len(batch["decoder_target_tokens"])
        encoder = np.where(batch["encoder_segment_ids"] > 0, batch["encoder_input_tokens"], 0)
        decoder = np.where(batch["decoder_segment_ids"] > 0, batch["decoder_target_tokens"], 0)
        real = lambda t: (t > vocabulary.eos_id) & (t < first_sentinel)
        noise += real(decoder).sum()
        raw += real(encoder).sum() + real(decoder).sum()
        spans += (decoder >= first_sentinel).sum()
    return noise / raw, noise / spans


def test_span_corruption_noise_density_over_the_corpus(data_dir, vocabulary):
    # T5's order (concatenate, split into random_spans_helper(128) = 141-token chunks, corrupt,
    # pack): 21 noise tokens in 7 spans per chunk, so 14.9% density, mean span 3.0.
    density, span = noise_statistics(span_corruption_dataset(data_dir, vocabulary),
                                     vocabulary, 1000)
    assert density == pytest.approx(0.15, rel=0.01)
    assert span == pytest.approx(3.0, rel=0.01)
    # Corrupting each document alone rounds the counts per document: short documents get one
    # noise token in one span, so spans come out shorter than asked.
    per_document = span_corruption_dataset(
        data_dir, vocabulary, objective=objectives.SpanCorruption(concatenate_documents=False))
    _, span = noise_statistics(per_document, vocabulary, 400)
    assert span < 3.0 * 0.97


def test_concat_then_split_joins_documents_without_separator():
    documents = [np.arange(n, dtype=np.int32) + 100 * (i + 1)
                 for i, n in enumerate([3, 17, 5, 1, 40, 8, 12])]
    stats = pipeline.RecordStats()
    source = grain.MapDataset.source(documents).to_iter_dataset()
    chunks = list(pipeline.concat_then_split(source, 10, 30, stats))
    stream = np.concatenate([d[:30] for d in documents])  # at most 30 tokens per document
    assert [len(c) for c in chunks] == [10] * (len(stream) // 10) + [len(stream) % 10]
    np.testing.assert_array_equal(np.concatenate(chunks), stream)
    assert stats.snapshot()["split_long"] == 3  # the documents longer than one chunk
    # The chunker's state restores mid-document.
    iterator = iter(pipeline.concat_then_split(source, 10, 30, pipeline.RecordStats()))
    for _ in range(3):
        next(iterator)
    resumed = iter(pipeline.concat_then_split(source, 10, 30, pipeline.RecordStats()))
    resumed.set_state(iterator.get_state())
    for a, b in zip(iterator, resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_span_corruption_pipeline_resumes_from_its_state(data_dir, vocabulary):
    dataset = span_corruption_dataset(data_dir, vocabulary, inputs_length=64, batch_size=4)
    iterator = iter(dataset)
    take(iterator, 5)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]
    resumed = iter(span_corruption_dataset(data_dir, vocabulary, inputs_length=64,
                                           batch_size=4))
    resumed.set_state(state)
    for a, b in zip(expected, (next(resumed) for _ in range(3))):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ------------------------------------------------------------------ shards and seeds
def test_shards_split_batch_and_replicas_agree(data_dir, vocabulary):
    config = pipeline.DatasetConfig(data_dir=data_dir)
    make = functools.partial(pipeline.make_dataset, config, vocabulary,
                             feature_lengths={"targets": 32}, batch_size=8, shard_count=4)
    replica_a, replica_b = take(make(shard_index=2)[0], 2), take(make(shard_index=2)[0], 2)
    other = take(make(shard_index=1)[0], 2)
    assert replica_a[0]["decoder_target_tokens"].shape == (2, 32)  # 8 rows over 4 shards
    for a, b in zip(replica_a, replica_b):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(replica_a[0]["decoder_target_tokens"],
                              other[0]["decoder_target_tokens"])
    with pytest.raises(ValueError, match="shard_index 4"):
        make(shard_index=4)
    with pytest.raises(ValueError, match="divisible by 3"):
        pipeline.make_dataset(config, vocabulary, feature_lengths={"targets": 32},
                              batch_size=8, shard_index=0, shard_count=3)


@pytest.mark.parametrize("objective", [objectives.SpanCorruption(),
                                       objectives.SpanCorruption(concatenate_documents=False),
                                       objectives.PrefixLM()])
def test_noise_is_seeded_per_shard(data_dir, vocabulary, objective):
    # Every record twice: shards 0 and 1 of 2 read the same documents in the same order, so
    # any difference in their examples is the objective's randomness.
    texts = list(pipeline.DatasetConfig(data_dir=data_dir).texts(limit=60))
    records = [{"text": t.encode()} for t in texts for _ in range(2)]
    _, targets = objectives.random_spans_helper(64)

    def first_batches(shard_index):
        dataset, _ = pipeline.make_dataset(
            make_config(records), vocabulary, feature_lengths={"inputs": 64, "targets": 64},
            batch_size=8, objective=objective, model_format=ENC_DEC, shuffle=False,
            repeat=False, shard_index=shard_index, shard_count=2)
        return take(dataset, 2)

    a, b, again = first_batches(0), first_batches(1), first_batches(0)
    assert targets <= 64
    first_sentinel = vocabulary.vocab_size - vocabulary.extra_ids
    for x, y, z in zip(a, b, again):
        np.testing.assert_array_equal(x["encoder_input_tokens"], z["encoder_input_tokens"])
        real = lambda batch: sorted(
            t for key in ("encoder_input_tokens", "decoder_target_tokens")
            for t in batch[key].ravel().tolist() if 1 < t < first_sentinel)
        assert real(x) == real(y), "both shards saw the same raw tokens"
    assert not all(np.array_equal(x["encoder_input_tokens"], y["encoder_input_tokens"])
                   for x, y in zip(a, b)), "but corrupted them differently"


# ------------------------------------------------------------------ evaluation batches
def test_eval_num_batches_is_the_same_on_every_shard(data_dir, vocabulary):
    texts = [t for t in pipeline.DatasetConfig(data_dir=data_dir).texts(limit=80)][:34]
    # Shard 0 of 2 reads records 0, 2, 4, ...: 30 documents; shard 1 only 4 (then empties).
    records = [{"text": b""}] * 60
    for i, text in enumerate(texts[:30]):
        records[2 * i] = {"text": text.encode()}
    for i, text in enumerate(texts[30:]):
        records[2 * i + 1] = {"text": text.encode()}
    lengths = {"targets": 32}
    expected_tokens = [sum(n + -(-n // 31) for n in (len(vocabulary.encode(t)) for t in part))
                       for part in (texts[:30], texts[30:])]  # each chunk of 31 + EOS

    def dataset(shard_index, num_batches=None):
        return pipeline.make_dataset(
            make_config(records), vocabulary, feature_lengths=lengths, batch_size=4,
            shuffle=False, repeat=False, shard_index=shard_index, shard_count=2,
            num_batches=num_batches)[0]

    shapes = pipeline.converters.batch_shapes(ModelFormat(architecture="decoder"), lengths, 2)
    natural = []
    for shard, expected in zip((0, 1), expected_tokens):
        # Alone, a finite dataset yields all its rows (the last batch padded with empty rows).
        unpadded = list(dataset(shard))
        natural.append(len(unpadded))
        assert sum(b["decoder_loss_weights"].sum() for b in unpadded) == expected
        out = list(dataset(shard, 40))
        assert len(out) == 40
        assert sum(b["decoder_loss_weights"].sum() for b in out) == expected
        for batch in out:
            assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
                k: (shape, np.dtype(dtype)) for k, (shape, dtype) in shapes.items()}
        padding = out[len(unpadded):]
        assert all(not b["decoder_segment_ids"].any() and not b["decoder_loss_weights"].any()
                   for b in padding)
        # Fewer batches than the data holds: exactly that many.
        assert len(list(dataset(shard, 1))) == 1
    assert natural[0] > natural[1] > 0


def test_model_format_decides_the_features(data_dir, vocabulary):
    config = pipeline.DatasetConfig(data_dir=data_dir)
    fmt = ModelFormat(eos_id=vocabulary.eos_id, bos_id=5, architecture="decoder")
    batch = take(pipeline.make_dataset(config, vocabulary, feature_lengths={"targets": 32},
                                       batch_size=2, model_format=fmt)[0], 1)[0]
    assert "encoder_input_tokens" not in batch and "decoder_causal_attention" not in batch
    assert (batch["decoder_input_tokens"][:, 0] == 5).all()  # rows start with its BOS
    with pytest.raises(ValueError, match="eos_id"):
        pipeline.make_dataset(config, vocabulary, feature_lengths={"targets": 32}, batch_size=2,
                              model_format=ModelFormat(eos_id=7, architecture="decoder"))


def test_global_batch_takes_the_global_batch_size():
    import jax

    mesh = jax.make_mesh((8,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    local = {"decoder_target_tokens": np.arange(8 * 4, dtype=np.int32).reshape(8, 4)}
    for batch_size in (None, 8):
        out = pipeline.global_batch(local, sharding, batch_size)["decoder_target_tokens"]
        assert out.shape == (8, 4) and out.sharding == sharding
        np.testing.assert_array_equal(np.asarray(out), local["decoder_target_tokens"])

"""Every objective trains with both architectures on the real corpus (T5's comparison grid)."""
import dataclasses
import json

import pytest

from t5x_lite import optimizers, train_loop
from t5x_lite.data import objectives, pipeline
from t5x_lite.models import decoder, model_format
from t5x_lite.models import encoder_decoder as ed

DECODER = decoder.DecoderLM(decoder.DecoderConfig(
    vocab_size=8320, embed_dim=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64))
# T5's prefix-LM architecture: the same decoder reading its inputs bidirectionally.
PREFIX_LM = DECODER.clone(config=dataclasses.replace(
    DECODER.config, format=model_format.ModelFormat(inputs_attention="bidirectional")))
ENCODER_DECODER = ed.EncoderDecoder(ed.EncoderDecoderConfig(
    vocab_size=8320, embed_dim=32, num_encoder_layers=1, num_decoder_layers=1, num_heads=4,
    head_dim=8, mlp_dim=64))

CASES = {
    "decoder/prefix_lm(bidirectional)": (PREFIX_LM, objectives.PrefixLM(), {"targets": 64}),
    "decoder/inputs_to_targets(causal)": (DECODER, objectives.PrefixLM(), {"targets": 64}),
    "encoder_decoder/prefix_lm": (ENCODER_DECODER, objectives.PrefixLM(),
                                  {"inputs": 48, "targets": 48}),
    "encoder_decoder/causal_lm": (ENCODER_DECODER, objectives.CausalLM(),
                                  {"inputs": 8, "targets": 64}),
    # T5 Table 2's decoder-only + denoising rows: corrupted inputs and targets in one row.
    "decoder/span_corruption(causal)": (DECODER, objectives.SpanCorruption(), {"targets": 64}),
    "decoder/span_corruption(bidirectional)": (PREFIX_LM, objectives.SpanCorruption(),
                                               {"targets": 64}),
}


def test_span_corruption_fills_a_decoder_row():
    objective = objectives.SpanCorruption()
    inputs = objective.decoder_inputs_length(512)
    _, targets = objectives.random_spans_helper(inputs)
    _, one_more = objectives.random_spans_helper(inputs + 1)
    assert inputs + targets <= 512 < inputs + 1 + one_more
    assert objective.raw_length({"targets": 512}) == objectives.random_spans_helper(inputs)[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_objective_trains(case, tmp_path, data_dir, vocabulary):
    model, objective, lengths = CASES[case]
    train_loop.train(
        model_dir=str(tmp_path), model=model, vocabulary=vocabulary,
        train_data=pipeline.DatasetConfig(data_dir=data_dir), objective=objective,
        optimizer=optimizers.adamw,
        learning_rate=optimizers.constant(1e-2), train_steps=4, batch_size=8,
        feature_lengths=lengths, mesh_shape=(1, 1, 1), log_every=1, checkpoint_every=100,
        progress_bar=False, peak_flops_per_device=1e12)
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    losses = [r["train/loss"] for r in records]
    assert losses[-1] < losses[0]
    assert all(r["train/target_tokens"] > 0 for r in records)
    if case.startswith("decoder/"):
        # The loss falls on the targets only: the prefix (about half of each packed
        # document) carries no weight.
        assert all(r["train/target_tokens"] < 0.8 * 8 * 64 for r in records)

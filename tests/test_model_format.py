"""The model format: one description of how a model reads its rows, used by every job.

Unit checks of the description itself, then a LLaMA-style model (unk 0, bos 1, eos 2, no pad;
a SentencePiece vocabulary with the same ids, trained here on the corpus) that trains, scores
and decodes with rows that start with BOS everywhere.
"""
import dataclasses
import io
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece

from t5x_lite import decoding, evaluation, optimizers, train_loop
from t5x_lite.data import feature_converters as converters
from t5x_lite.data import objectives, pipeline, vocab
from t5x_lite.errors import InputError
from t5x_lite.models import decoder, model_format
from t5x_lite.models import encoder_decoder as ed

LLAMA_IDS = model_format.ModelFormat(pad_id=2, eos_id=2, unk_id=0, bos_id=1)


def tiny_decoder(fmt=model_format.ModelFormat(), vocab_size=64, **fields):
    return decoder.DecoderLM(decoder.DecoderConfig(
        vocab_size=vocab_size, embed_dim=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64,
        format=fmt, **fields))


def test_the_architecture_comes_from_the_model_class():
    assert model_format.of(tiny_decoder()).architecture == "decoder"
    t5 = ed.EncoderDecoder(ed.EncoderDecoderConfig(vocab_size=64, embed_dim=32, num_heads=2,
                                                   head_dim=8, mlp_dim=32))
    fmt = model_format.of(t5)
    assert fmt.architecture == "encoder_decoder" and fmt.start_id == 0
    assert not fmt.bidirectional_inputs  # an encoder reads bidirectionally on its own
    with pytest.raises(ValueError, match="is a decoder model, but its format says"):
        model_format.of(tiny_decoder(model_format.ModelFormat(architecture="encoder_decoder")))


def test_start_id_is_bos_or_the_shift_right_id():
    assert model_format.of(tiny_decoder()).start_id == 0
    assert model_format.of(tiny_decoder(LLAMA_IDS)).start_id == 1


def test_bad_formats_are_refused_where_they_are_built():
    with pytest.raises(ValueError, match="inputs_attention must be one of"):
        model_format.ModelFormat(inputs_attention="both")
    with pytest.raises(ValueError, match="bos_id must be a non-negative integer"):
        model_format.ModelFormat(bos_id=-1)
    with pytest.raises(ValueError, match=r"format.eos_id=64 is not below vocab_size=64"):
        tiny_decoder(model_format.ModelFormat(eos_id=64))


def test_format_round_trips_through_a_dict():
    assert model_format.ModelFormat.from_dict(LLAMA_IDS.to_dict()) == LLAMA_IDS


def _packed_row(inputs, targets, fmt, length=12):
    features, _ = converters.to_packable({"inputs": np.asarray(inputs),
                                          "targets": np.asarray(targets)}, fmt,
                                         {"targets": length})
    row = {k: np.pad(v, (0, length - len(v)))[None] for k, v in features.items()}
    n = len(features["targets"])
    row["targets_segment_ids"] = (np.arange(length) < n).astype(np.int32)[None]
    row["targets_positions"] = np.where(np.arange(length) < n, np.arange(length), 0)[None]
    return converters.convert(row, fmt)


def test_rows_start_with_the_formats_start_id_and_weigh_every_target():
    fmt = model_format.of(tiny_decoder(dataclasses.replace(LLAMA_IDS,
                                                           inputs_attention="bidirectional")))
    row = _packed_row([7, 8], [0, 9, 2], fmt)  # id 0 is a real target token here
    np.testing.assert_array_equal(row["decoder_input_tokens"][0, :5], [1, 7, 8, 0, 9])
    np.testing.assert_array_equal(row["decoder_loss_weights"][0, :6], [0, 0, 1, 1, 1, 0])
    # The prefix (start + inputs) attends both ways; the first target's query position too.
    np.testing.assert_array_equal(row["decoder_causal_attention"][0, :5], [1, 1, 1, 0, 0])
    causal = _packed_row([7, 8], [0, 9, 2], model_format.of(tiny_decoder(LLAMA_IDS)))
    assert "decoder_causal_attention" not in causal


def test_decoding_requests_the_model_cannot_read_are_one_line_input_errors():
    module = tiny_decoder(position_embedding="learned", max_length=8)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0),
                                           jnp.ones((1, 4), jnp.int32))["params"])
    with pytest.raises(InputError, match="max_new_tokens must be a positive integer, got 0"):
        decoding.decode(module, params, [[3]], max_new_tokens=0)
    with pytest.raises(InputError, match="prompt 1: token id 70 is outside"):
        decoding.decode(module, params, [[3], [70]], max_new_tokens=2)
    # [start, 3, 4, 5] + 5 new tokens, of which the model reads 4: 8 positions fit, 9 do not.
    decoding.decode(module, params, [[3, 4, 5]], max_new_tokens=5)
    with pytest.raises(InputError, match=r"prompt 0: 9 positions exceed .*max_length=8"):
        decoding.decode(module, params, [[3, 4, 5]], max_new_tokens=6)


# ------------------------------------------------------------- a LLaMA-style model, end to end
@pytest.fixture(scope="module")
def llama_vocabulary(data_dir, tmp_path_factory):
    """A 512-piece SentencePiece model with LLaMA's special ids (unk 0, bos 1, eos 2, no pad),
    trained on the corpus."""
    texts = list(pipeline.DatasetConfig(data_dir=data_dir).texts(limit=400))
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(t[:2000] for t in texts), model_writer=model, vocab_size=512,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, model_type="unigram", num_threads=1)
    path = tmp_path_factory.mktemp("llama_vocab") / "llama.model"
    path.write_bytes(model.getvalue())
    return vocab.Vocabulary(str(path), extra_ids=0)


def test_the_vocabulary_reads_its_special_ids_from_the_sentencepiece_model(llama_vocabulary):
    assert (llama_vocabulary.unk_id, llama_vocabulary.bos_id, llama_vocabulary.eos_id,
            llama_vocabulary.pad_id) == (0, 1, 2, None)
    ids = llama_vocabulary.encode("Return the value.")
    assert llama_vocabulary.decode([1] + ids + [2, 5, 6]) == "Return the value."


def test_a_llama_style_model_trains_scores_and_decodes(tmp_path, data_dir, llama_vocabulary):
    module = tiny_decoder(LLAMA_IDS, vocab_size=512)
    lengths = {"targets": 32}
    dataset, _ = pipeline.make_dataset(
        pipeline.DatasetConfig(data_dir=data_dir), llama_vocabulary, feature_lengths=lengths,
        batch_size=4, model_format=model_format.of(module), shuffle=False)
    batch = next(iter(dataset))
    starts = np.diff(batch["decoder_segment_ids"], prepend=0, axis=1) != 0
    starts &= batch["decoder_segment_ids"] > 0
    assert (batch["decoder_input_tokens"][starts] == 1).all()  # every document starts with BOS
    assert (batch["decoder_target_tokens"] == 2).any()  # and ends with eos 2

    train_loop.train(
        model_dir=str(tmp_path), model=module, vocabulary=llama_vocabulary,
        train_data=pipeline.DatasetConfig(data_dir=data_dir), optimizer=optimizers.adamw,
        learning_rate=optimizers.constant(3e-3), train_steps=12, batch_size=8,
        feature_lengths=lengths, mesh_shape=(1, 1, 1), log_every=4, checkpoint_every=12,
        progress_bar=False, peak_flops_per_device=1e12, objective=objectives.CausalLM())
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < losses[0]

    from t5x_lite import inference

    params = inference.load(module, str(tmp_path))
    text = llama_vocabulary.encode("The value")
    scored = evaluation.score(module, params, [{"inputs": text, "targets": [2]}],
                              batch_size=1, inputs_length=len(text), targets_length=1)
    assert np.isfinite(scored[0]["log_likelihood"]) and scored[0]["num_tokens"] == 1
    out = decoding.decode(module, params, [text], max_new_tokens=6)
    assert out["tokens"].shape == (1, 1, 6)
    assert (out["tokens"] < 512).all()


def test_a_prefix_lm_decodes_with_a_bidirectional_prompt():
    """Cached decoding of a prefix-LM format equals full recomputation with the prompt read
    both ways (as training read its inputs), and differs from reading it causally."""
    causal = tiny_decoder()
    params = nn.unbox(jax.jit(causal.init)(jax.random.key(3),
                                           jnp.ones((1, 4), jnp.int32))["params"])
    prefix_lm = tiny_decoder(model_format.ModelFormat(inputs_attention="bidirectional"))
    prompts = [[5, 9, 13, 21, 8], [40, 41], [7, 3, 3, 9]]
    for module in (causal, prefix_lm):
        cached = decoding.decode(module, params, prompts, max_new_tokens=6)["tokens"][:, 0]
        np.testing.assert_array_equal(
            cached, decoding.decode_uncached(module, params, prompts, max_new_tokens=6))
    first = [decoding.decode(m, params, prompts, max_new_tokens=1,
                             strategy=decoding.Strategy())["scores"] for m in (causal, prefix_lm)]
    assert np.abs(first[0] - first[1]).max() > 1e-3  # the prompt really is read both ways

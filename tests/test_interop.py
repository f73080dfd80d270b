"""transformers interop: imported checkpoints and exported ones give transformers' logits.

Tiny random transformers models are built locally from config objects (nothing is
downloaded); logits are compared in float32 on a batch with padding, at the positions that
are not padding.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import torch  # noqa: E402  (test extras: a missing one fails the run, never skips it)
import transformers  # noqa: E402

from t5x_lite import interop  # noqa: E402
from t5x_lite.interop import convert  # noqa: E402
from t5x_lite.models import decoder, encoder_decoder  # noqa: E402

ATOL = 1e-4
VOCAB = 128
T5_V1_1 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
               num_decoder_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
               relative_attention_num_buckets=32, relative_attention_max_distance=128)
T5_V1_0 = dict(T5_V1_1, feed_forward_proj="relu", tie_word_embeddings=True, num_decoder_layers=3)
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5)
GPT2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
            bos_token_id=1, eos_token_id=1)
# Encoder lengths past T5's 8 exact buckets, so the logarithmic buckets are exercised.
ENC_LENGTHS, DEC_LENGTHS = (40, 27, 13), (20, 15, 9)


def _randomize(model, seed=0):
    """Weights of O(1) activations (transformers' own init makes near-zero logits, where a
    1e-4 tolerance would prove little)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                p.copy_(noise * 0.1 + (0.0 if name.endswith("bias") else 1.0))
            elif any(e in name for e in ("shared", "embed", "wte", "wpe")):
                p.copy_(noise)  # T5's embedding init (and large logits when tied)
            else:
                p.copy_(noise * p.shape[-1] ** -0.5)
    return model.eval()


def _mask(lengths, length):
    return (np.arange(length)[None] < np.array(lengths)[:, None]).astype(np.int32)


def _batch(seed, *lengths):
    rng = np.random.default_rng(seed)
    return [rng.integers(2, VOCAB, (len(ls), max(ls))).astype(np.int32) for ls in lengths]


def _save_hf(model, path):
    model.save_pretrained(str(path))
    return str(path)


def seq2seq_logits_match(hf_model, module, params):
    enc, dec = _batch(1, ENC_LENGTHS, DEC_LENGTHS)
    enc_mask, dec_mask = _mask(ENC_LENGTHS, enc.shape[1]), _mask(DEC_LENGTHS, dec.shape[1])
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc_mask),
                       decoder_input_ids=torch.tensor(dec),
                       decoder_attention_mask=torch.tensor(dec_mask)).logits.numpy()
    # Padding, our way: segment id 0.
    ours = np.asarray(jax.jit(module.apply)({"params": params}, enc, dec,
                                            encoder_segment_ids=enc_mask,
                                            decoder_segment_ids=dec_mask))
    return _max_diff(ours, ref, dec_mask)


def causal_logits_match(hf_model, module, params):
    (tokens,) = _batch(2, DEC_LENGTHS)
    mask = _mask(DEC_LENGTHS, tokens.shape[1])
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(tokens),
                       attention_mask=torch.tensor(mask)).logits.numpy()
    ours = np.asarray(jax.jit(module.apply)({"params": params}, tokens,
                                            decoder_segment_ids=mask))
    return _max_diff(ours, ref, mask)


def _max_diff(ours, ref, mask):
    assert ours.shape == ref.shape
    ours, ref = ours[mask.astype(bool)], ref[mask.astype(bool)]
    diff = float(np.abs(ours - ref).max())
    print(f"max |logit diff| {diff:.2e} (logits up to {np.abs(ref).max():.2f})")
    assert np.abs(ref).max() > 0.5  # a meaningful comparison, not near-zero logits
    assert diff < ATOL
    return diff


# ---------------------------------------------------------------------------------- import
@pytest.mark.parametrize("hf_kwargs,scan", [(T5_V1_1, True), (T5_V1_1, False), (T5_V1_0, True)],
                         ids=["t5_v1_1-scan", "t5_v1_1-unrolled", "t5_v1_0-tied"])
def test_import_t5(hf_kwargs, scan, tmp_path):
    hf_model = _randomize(transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_kwargs)))
    if hf_kwargs is T5_V1_1 and scan:
        # Like the released v1.1 checkpoints: an lm_head of its own. (Otherwise transformers 5
        # keeps it tied to `shared` and saves no lm_head.weight: the unrolled case.)
        hf_model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 32 ** -0.5)
    hf_dir = _save_hf(hf_model, tmp_path / "hf")
    convert.import_hf(hf_dir, str(tmp_path / "ours"), scan_layers=scan)
    module, params = interop.load_model(str(tmp_path / "ours"))
    cfg = module.config
    assert cfg.scan_layers == scan and ("layers" in params["encoder"]) == scan
    assert cfg.tie_embeddings == (hf_kwargs is T5_V1_0)
    assert cfg.mlp_activations == (("relu",) if hf_kwargs is T5_V1_0 else ("gelu", "linear"))
    if hf_kwargs is T5_V1_1:
        head = hf_model.lm_head.weight.detach().numpy().T
        np.testing.assert_array_equal(params["lm_head"]["kernel"], head)
    seq2seq_logits_match(hf_model, module, params)


@pytest.mark.parametrize("model_type,scan", [("llama", True), ("llama", False),
                                             ("mistral", True), ("gpt2", True)])
def test_import_decoder(model_type, scan, tmp_path):
    if model_type == "gpt2":
        hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2))
    elif model_type == "mistral":
        hf_model = transformers.MistralForCausalLM(transformers.MistralConfig(
            **LLAMA, sliding_window=None, tie_word_embeddings=True))
    else:
        hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    _randomize(hf_model)
    module = convert.import_hf(_save_hf(hf_model, tmp_path / "hf"), str(tmp_path / "ours"),
                               scan_layers=scan)
    assert module.config.scan_layers == scan
    if model_type != "gpt2":
        assert module.config.kv_heads == 2 and module.config.norm_epsilon == 1e-5
    module, params = interop.load_model(str(tmp_path / "ours"))
    causal_logits_match(hf_model, module, params)


# ---------------------------------------------------------------------------------- export
def _our_model_dir(path, module, seed=0):
    """A model directory holding a random model of ours (numpy draws, not `init`: no
    compilation, and norm scales that are not all ones)."""
    from flax import traverse_util

    from t5x_lite import checkpoints
    from t5x_lite.interop import mapping

    rng = np.random.default_rng(seed)
    params = {}
    for path_, x in traverse_util.flatten_dict(mapping.abstract_params(module)).items():
        noise = rng.standard_normal(x.shape).astype(np.float32)
        if path_[-1] == "scale":
            params[path_] = 1.0 + 0.1 * noise
        elif path_[-1] == "embedding":
            params[path_] = noise
        else:
            params[path_] = 0.2 * noise
    params = traverse_util.unflatten_dict(params)
    os.makedirs(path, exist_ok=True)
    checkpoints.save_params(os.path.join(path, convert.PARAMS_DIR), params)
    convert.write_model_config(str(path), module)
    return str(path), params


@pytest.mark.parametrize("overrides", [dict(scan_layers=True),
                                       dict(scan_layers=False, mlp_activations=("relu",),
                                            tie_embeddings=True)],
                         ids=["t5_v1_1-scan", "t5_v1_0-unrolled"])
def test_export_t5(overrides, tmp_path):
    module = encoder_decoder.EncoderDecoder(encoder_decoder.EncoderDecoderConfig(
        vocab_size=VOCAB, embed_dim=32, num_encoder_layers=2, num_decoder_layers=2,
        num_heads=4, head_dim=8, mlp_dim=64, **overrides))
    model_dir, params = _our_model_dir(tmp_path / "ours", module)
    convert.export_hf(model_dir, str(tmp_path / "hf"))
    hf_model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "hf")).eval()
    assert isinstance(hf_model, transformers.T5ForConditionalGeneration)
    seq2seq_logits_match(hf_model, module, params)


@pytest.mark.parametrize("overrides", [
    dict(num_kv_heads=2, scan_layers=True),
    dict(num_kv_heads=2, scan_layers=False, tie_embeddings=True, rope_theta=500.0),
    dict(position_embedding="learned", norm_type="layernorm", use_bias=True,
         mlp_activations=("gelu",), tie_embeddings=True, max_length=64),
], ids=["llama-gqa-scan", "llama-tied-unrolled", "gpt2"])
def test_export_decoder(overrides, tmp_path):
    module = decoder.DecoderLM(decoder.DecoderConfig(
        vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64,
        **overrides))
    model_dir, params = _our_model_dir(tmp_path / "ours", module)
    convert.export_hf(model_dir, str(tmp_path / "hf"))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    causal_logits_match(hf_model, module, params)


# ---------------------------------------------------------------------------------- CLI
def test_cli_round_trip(tmp_path):
    """convert --from_hf, then --to_hf: transformers loads the result with its original
    weights; model.gin rebuilds the architecture."""
    hf_model = _randomize(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)))
    hf_dir = _save_hf(hf_model, tmp_path / "hf")
    model_dir, out_dir = str(tmp_path / "ours"), str(tmp_path / "back")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for args in (["--from_hf", hf_dir, "--to", model_dir],
                 ["--to_hf", out_dir, "--from", model_dir]):
        result = subprocess.run([sys.executable, "-m", "t5x_lite.main", "convert", *args],
                                capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
    back = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    for name, tensor in hf_model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name].numpy(), tensor.numpy(), name)
    with open(os.path.join(out_dir, "config.json")) as f:
        assert json.load(f)["num_key_value_heads"] == 2
    gin_text = open(os.path.join(model_dir, convert.MODEL_GIN)).read()
    assert "num_kv_heads = 2" in gin_text and "train_loop.train.init_from = %INIT_FROM" in gin_text


# ---------------------------------------------------------------------------------- fine-tune
@pytest.mark.parametrize("init_from", [convert.PARAMS_DIR, "."])
def test_train_starts_from_an_import(init_from, tmp_path, data_dir, vocabulary):
    """`train(init_from=MODEL_DIR/params)` or the import's directory itself (as instruction
    tuning names it): with a zero learning rate the run's checkpoint holds exactly the
    imported weights, and `load_model` reads them from the run."""
    from t5x_lite import optimizers, train_loop
    from t5x_lite.data import pipeline

    # The corpus vocabulary has 8,292 ids: pad 0, eos 1, no BOS (a LLaMA-architecture model
    # trained here and exported would carry exactly these ids).
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**dict(
        LLAMA, vocab_size=8320, bos_token_id=None, eos_token_id=1, pad_token_id=0)))
    imported = str(tmp_path / "imported")
    module = convert.import_hf(_save_hf(hf_model, tmp_path / "hf"), imported)
    train_loop.train(
        model_dir=str(tmp_path / "run"), model=module, vocabulary=vocabulary,
        train_data=pipeline.DatasetConfig(data_dir=data_dir), optimizer=optimizers.adamw,
        learning_rate=optimizers.constant(0.0), train_steps=1, batch_size=8,
        feature_lengths={"targets": 32}, mesh_shape=(1, 1, 1), checkpoint_every=1,
        progress_bar=False, peak_flops_per_device=1e12,
        init_from=os.path.normpath(os.path.join(imported, init_from)))
    _, expected = interop.load_model(imported)
    _, trained = interop.load_model(str(tmp_path / "run"), module)
    jax.tree.map(np.testing.assert_array_equal, trained, expected)


def test_training_refuses_a_vocabulary_that_disagrees_with_the_model(tmp_path, data_dir,
                                                                     vocabulary):
    """An imported LLaMA ends rows with eos 2; the corpus vocabulary's EOS is 1. Training it
    on that vocabulary would teach the wrong stop token: a one-line error, before any step."""
    from t5x_lite import optimizers, train_loop
    from t5x_lite.data import pipeline

    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**dict(
        LLAMA, vocab_size=8320, bos_token_id=1, eos_token_id=2)))
    module = convert.import_hf(_save_hf(hf_model, tmp_path / "hf"), str(tmp_path / "imported"))
    assert (module.config.format.bos_id, module.config.format.eos_id) == (1, 2)
    with pytest.raises(ValueError, match=r"format.eos_id=2 but the vocabulary's eos_id is 1"):
        train_loop.train(
            model_dir=str(tmp_path / "run"), model=module, vocabulary=vocabulary,
            train_data=pipeline.DatasetConfig(data_dir=data_dir), optimizer=optimizers.adamw,
            learning_rate=optimizers.constant(0.0), train_steps=1, batch_size=8,
            feature_lengths={"targets": 32}, mesh_shape=(1, 1, 1), progress_bar=False)
    assert not (tmp_path / "run" / "checkpoints").exists()

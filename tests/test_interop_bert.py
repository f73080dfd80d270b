"""transformers BERT / RoBERTa interop (hf_bert): imported checkpoints and exported ones give
transformers' MLM logits (or, for a bare BertModel, its last hidden states).

Tiny random models are built locally; outputs are compared in float32 on a batch with right
padding (transformers' attention_mask is our segment ids: 1 real, 0 padding), at the
positions that are not padding.
"""
import json
import logging
import os

import jax
import numpy as np
import pytest

import torch  # noqa: E402  (test extras: a missing one fails the run, never skips it)
import transformers  # noqa: E402

from t5x_lite import interop, main  # noqa: E402
from t5x_lite.interop import convert, hf_bert  # noqa: E402
from t5x_lite.models import encoder, model_format  # noqa: E402
from test_interop import _our_model_dir, _randomize  # noqa: E402

ATOL = 1e-4
VOCAB = 128
HF_SIZES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=48, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
OUR_SIZES = dict(vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=4, head_dim=8,
                 mlp_dim=48, dropout_rate=0.0)
LENGTHS = (16, 11, 5)


def _hf_model(kind):
    if kind == "roberta":
        return transformers.RobertaForMaskedLM(transformers.RobertaConfig(
            **HF_SIZES, max_position_embeddings=42, type_vocab_size=1, layer_norm_eps=1e-5,
            pad_token_id=1, bos_token_id=0, eos_token_id=2))
    config = transformers.BertConfig(**HF_SIZES, max_position_embeddings=40)
    if kind == "bert_model":
        return transformers.BertModel(config)  # with its pooler
    return transformers.BertForMaskedLM(config)


def _batch(pad_id, seed=0):
    """Tokens (no special ids inside a row, so RoBERTa's positions are 0.. from its pad id
    on), the attention mask / our segment ids, and BERT token types (sentence B: the second
    half of each row)."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(max(LENGTHS))[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
    tokens = np.where(mask, rng.integers(4, VOCAB, mask.shape), pad_id).astype(np.int32)
    types = (np.arange(mask.shape[1])[None] >= np.array(LENGTHS)[:, None] // 2) * mask
    return tokens, mask, types.astype(np.int32)


def outputs_match(hf_model, module, params):
    """transformers' logits (or last_hidden_state for a bare model) vs ours."""
    cfg = module.config
    tokens, mask, types = _batch(cfg.format.pad_id)
    inputs = dict(input_ids=torch.tensor(tokens, dtype=torch.long),
                  attention_mask=torch.tensor(mask, dtype=torch.long))
    if cfg.type_vocab_size:
        inputs["token_type_ids"] = torch.tensor(types, dtype=torch.long)
    with torch.no_grad():
        out = hf_model(**inputs)
    ref = (out.logits if cfg.mlm_head else out.last_hidden_state).numpy()
    apply = jax.jit(lambda p, *features: module.apply(
        {"params": p}, *features, outputs="logits" if cfg.mlm_head else "hidden"))
    ours = np.asarray(apply(params, tokens, mask, None,
                            types if cfg.type_vocab_size else None))
    assert ours.shape == ref.shape
    ours, ref = ours[mask.astype(bool)], ref[mask.astype(bool)]
    diff = float(np.abs(ours - ref).max())
    print(f"max |diff| {diff:.2e} (values up to {np.abs(ref).max():.2f})")
    assert np.abs(ref).max() > 0.5  # a meaningful comparison
    assert diff < ATOL
    return diff


# ---------------------------------------------------------------------------------- import
@pytest.mark.parametrize("kind,scan", [("bert", True), ("roberta", False)])
def test_import_masked_lm(kind, scan, tmp_path):
    hf_model = _randomize(_hf_model(kind))
    hf_model.save_pretrained(str(tmp_path / "hf"))
    convert.import_hf(str(tmp_path / "hf"), str(tmp_path / "ours"), scan_layers=scan)
    module, params = interop.load_model(str(tmp_path / "ours"))
    cfg = module.config
    assert isinstance(module, encoder.EncoderLM) and cfg.mlm_head and cfg.scan_layers == scan
    assert ("layers" in params) == scan
    # No tokenizer saved: config.json's ids, then the released vocabularies' (documented).
    if kind == "bert":
        assert (cfg.type_vocab_size, cfg.position_offset, cfg.norm_epsilon) == (2, 0, 1e-12)
        expected = dict(pad_id=0, unk_id=100, bos_id=101, eos_id=102, mask_id=103)
    else:
        assert (cfg.type_vocab_size, cfg.position_offset, cfg.norm_epsilon) == (0, 2, 1e-5)
        expected = dict(pad_id=1, unk_id=3, bos_id=0, eos_id=2, mask_id=VOCAB - 1)
    assert {k: getattr(cfg.format, k) for k in expected} == expected
    gin_text = (tmp_path / "ours" / convert.MODEL_GIN).read_text()
    assert "encoder.EncoderLM.config = @encoder.EncoderConfig()" in gin_text
    assert f"mask_id = {expected['mask_id']}" in gin_text
    outputs_match(hf_model, module, params)


def test_import_bare_bert_model_drops_the_pooler(tmp_path, caplog):
    """BertModel: no MLM head (mlm_head=False), hidden states match, the pooler is dropped
    with a warning; special ids come from the tokenizer saved with it."""
    hf_dir = tmp_path / "hf"
    hf_model = _randomize(_hf_model("bert_model"))
    hf_model.save_pretrained(str(hf_dir))
    words = ["[UNK]", "[SEP]", "hello", "[PAD]", "[MASK]", "[CLS]", "world"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizer(vocab_file=str(tmp_path / "vocab.txt"))
    tokenizer.save_pretrained(str(hf_dir))
    with caplog.at_level(logging.WARNING, logger="t5x_lite.interop.hf_bert"):
        module = convert.import_hf(str(hf_dir), str(tmp_path / "ours"))
    assert "pooler.dense.weight" in caplog.text
    cfg = module.config
    assert not cfg.mlm_head
    fmt = cfg.format
    assert fmt.pad_id == 0  # config.json's pad_token_id comes first
    assert (fmt.unk_id, fmt.bos_id, fmt.eos_id, fmt.mask_id) == (
        tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
        tokenizer.mask_token_id)
    assert fmt.mask_id != 103  # not the fallback
    module, params = interop.load_model(str(tmp_path / "ours"))
    assert "mlm_head" not in params
    outputs_match(hf_model, module, params)


# ---------------------------------------------------------------------------------- export
ROBERTA_FORMAT = model_format.ModelFormat(pad_id=1, eos_id=2, unk_id=3, bos_id=0,
                                          decoder_start_id=1, mask_id=VOCAB - 1)
BERT_FORMAT = model_format.ModelFormat(pad_id=0, eos_id=102, unk_id=100, bos_id=101,
                                       mask_id=103)


@pytest.mark.parametrize("kind,overrides", [
    ("bert", dict(scan_layers=True, max_length=40, format=BERT_FORMAT)),
    ("roberta", dict(scan_layers=False, max_length=42, type_vocab_size=0, position_offset=2,
                     norm_epsilon=1e-5, format=ROBERTA_FORMAT)),
    ("bert_model", dict(scan_layers=True, max_length=40, mlm_head=False, format=BERT_FORMAT)),
])
def test_export(kind, overrides, tmp_path):
    module = encoder.EncoderLM(encoder.EncoderConfig(**OUR_SIZES, **overrides))
    model_dir, params = _our_model_dir(tmp_path / "ours", module)
    convert.export_hf(model_dir, str(tmp_path / "hf"))
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    if kind == "bert_model":
        hf_model = transformers.AutoModel.from_pretrained(str(tmp_path / "hf"))
        assert type(hf_model) is transformers.BertModel
    else:
        hf_model = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "hf"))
        assert type(hf_model).__name__ == {"bert": "BertForMaskedLM",
                                           "roberta": "RobertaForMaskedLM"}[kind]
    assert {k: hf_config[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")} == {
        "pad_token_id": module.config.format.pad_id, "bos_token_id": module.config.format.bos_id,
        "eos_token_id": module.config.format.eos_id}
    if kind == "roberta":  # the token-type row comes back, as zeros
        assert hf_config["type_vocab_size"] == 1
        types = hf_model.roberta.embeddings.token_type_embeddings.weight
        assert types.shape == (1, 32) and not types.detach().numpy().any()
    outputs_match(hf_model.eval(), module, params)


def test_bert_for_pretraining_round_trip(tmp_path):
    """BertForPreTraining imports with its next-sentence head (pooler + seq_relationship)
    and exports back: MLM logits and the NSP logits at the first position match
    transformers' both ways."""
    hf_model = _randomize(transformers.BertForPreTraining(
        transformers.BertConfig(**HF_SIZES, max_position_embeddings=40))).eval()
    hf_model.save_pretrained(str(tmp_path / "hf"))
    convert.import_hf(str(tmp_path / "hf"), str(tmp_path / "ours"))
    module, params = interop.load_model(str(tmp_path / "ours"))
    assert module.config.next_sentence_head and module.config.mlm_head
    convert.export_hf(str(tmp_path / "ours"), str(tmp_path / "back"))
    exported = transformers.AutoModelForPreTraining.from_pretrained(str(tmp_path / "back"))
    assert type(exported) is transformers.BertForPreTraining
    tokens, mask, types = _batch(0)
    inputs = dict(input_ids=torch.tensor(tokens, dtype=torch.long),
                  attention_mask=torch.tensor(mask, dtype=torch.long),
                  token_type_ids=torch.tensor(types, dtype=torch.long))
    logits, hidden = module.apply({"params": params}, tokens, mask, None, types, outputs="both")
    pairs = module.apply({"params": params}, hidden, method="next_sentence_logits")[:, 0]
    real = mask.astype(bool)
    for reference in (hf_model, exported.eval()):
        with torch.no_grad():
            out = reference(**inputs)
        np.testing.assert_allclose(np.asarray(logits)[real],
                                   out.prediction_logits.numpy()[real], atol=ATOL)
        ref_pairs = out.seq_relationship_logits.numpy()
        assert np.abs(ref_pairs).max() > 0.05
        np.testing.assert_allclose(np.asarray(pairs), ref_pairs, atol=ATOL)


def test_export_refuses_what_transformers_cannot_express():
    roberta = dict(OUR_SIZES, max_length=42, type_vocab_size=0, position_offset=2)
    with pytest.raises(NotImplementedError, match="pad_token_id \\+ 1"):
        hf_bert.config_to_hf(encoder.EncoderConfig(**roberta))  # pad 0, positions from 2
    with pytest.raises(NotImplementedError, match="not a BERT architecture"):
        hf_bert.config_to_hf(encoder.EncoderConfig(**OUR_SIZES, post_norm=False))
    with pytest.raises(NotImplementedError, match="position_embedding_type"):
        hf_bert.config_from_hf(dict(transformers.BertConfig(**HF_SIZES).to_dict(),
                                    position_embedding_type="relative_key"))


# ---------------------------------------------------------------------------------- CLI
def test_cli_round_trip_roberta(tmp_path):
    """convert --from_hf, then --to_hf: transformers reads the same logits back (the folded
    token-type row is now in the position table)."""
    hf_model = _randomize(_hf_model("roberta"))
    hf_model.save_pretrained(str(tmp_path / "hf"))
    model_dir, out_dir = str(tmp_path / "ours"), str(tmp_path / "back")
    assert main.main(["convert", "--from_hf", str(tmp_path / "hf"), "--to", model_dir]) == 0
    assert main.main(["convert", "--to_hf", out_dir, "--from", model_dir]) == 0
    back = transformers.AutoModelForMaskedLM.from_pretrained(out_dir).eval()
    tokens, mask, _ = _batch(pad_id=1)
    inputs = dict(input_ids=torch.tensor(tokens, dtype=torch.long),
                  attention_mask=torch.tensor(mask, dtype=torch.long))
    with torch.no_grad():
        np.testing.assert_allclose(back(**inputs).logits.numpy(),
                                   hf_model(**inputs).logits.numpy(), atol=1e-5)
    with open(os.path.join(out_dir, "config.json")) as f:
        exported = json.load(f)
    assert (exported["model_type"], exported["pad_token_id"]) == ("roberta", 1)

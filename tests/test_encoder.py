"""Encoder-only LM (BERT, RoBERTa): packing isolation, mesh invariance, the classifier head,
the zoo's parameter counts, and logits equal to transformers' for the same weights."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from packing import pack
from t5x_lite import partitioning
from t5x_lite.interop import hf_bert
from t5x_lite.models import encoder, heads, model_format

TINY = dict(vocab_size=128, embed_dim=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64,
            max_length=32)
ROBERTA = dict(type_vocab_size=0, position_offset=2, norm_epsilon=1e-5)


def _init(cfg, length=24):
    model = encoder.EncoderLM(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, length), jnp.int32))["params"]
    return model, nn.unbox(params)


def _apply(model, **kwargs):
    """`model.apply` compiled (eager dispatch is slower than one compile per shape here)."""
    return jax.jit(lambda params, *args, **features: model.apply(
        {"params": params}, *args, **features, **kwargs))


def test_the_format_says_encoder():
    model = encoder.EncoderLM(encoder.EncoderConfig(**TINY))
    fmt = model_format.of(model)
    assert fmt.encoder_only and not fmt.encoder_decoder and not fmt.bidirectional_inputs
    assert model_format.max_positions(model) == 32
    roberta = encoder.EncoderLM(encoder.EncoderConfig(**TINY, **ROBERTA))
    assert model_format.max_positions(roberta) == 30  # positions 2.. of a 32-row table
    with pytest.raises(ValueError, match=r"format.mask_id=128 is not below vocab_size=128"):
        encoder.EncoderConfig(**TINY, format=model_format.ModelFormat(mask_id=128))


@pytest.mark.parametrize("overrides", [{}, ROBERTA, {"post_norm": False}],
                         ids=["bert", "roberta", "pre_norm"])
def test_packed_row_matches_each_example_alone(overrides):
    model, params = _init(encoder.EncoderConfig(**TINY, **overrides))
    rng = np.random.default_rng(0)
    examples = [rng.integers(3, 128, size=n) for n in (7, 5, 9)]
    tokens, segments, positions = pack(examples, 24)
    types = np.zeros_like(tokens)
    types[0, 3:7] = 1  # sentence B of the first example
    apply = _apply(model)
    packed = apply(params, tokens, segments, positions, None if overrides else types)[0]
    offset = 0
    for example in examples:
        alone_types = types[:, offset:offset + len(example)] if not overrides else None
        alone = apply(params, example[None].astype(np.int32),
                      encoder_token_types=alone_types)[0]
        np.testing.assert_allclose(packed[offset:offset + len(example)], alone, atol=2e-5)
        offset += len(example)


def test_attention_is_bidirectional():
    model, params = _init(encoder.EncoderConfig(**TINY))
    tokens = np.random.default_rng(1).integers(3, 128, size=(1, 12)).astype(np.int32)
    changed = tokens.copy()
    changed[0, -1] = 5
    a, b = _apply(model)(params, np.concatenate([tokens, changed]))
    assert not np.allclose(a[0], b[0])


def test_hidden_outputs_build_no_mlm_head():
    model = encoder.EncoderLM(encoder.EncoderConfig(**TINY))
    tokens = jnp.ones((1, 8), jnp.int32)
    trunk_only = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, outputs="hidden"))
    assert "mlm_head" not in trunk_only["params"]
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), tokens)["params"])
    logits, hidden = _apply(model, outputs="both")(params, tokens)
    assert logits.shape == (1, 8, 128) and logits.dtype == jnp.float32
    np.testing.assert_allclose(hidden, _apply(model, outputs="hidden")(params, tokens),
                               atol=1e-6)


def _logits_on(mesh_shape, model, params, batch):
    mesh = partitioning.make_mesh(mesh_shape)
    rules = partitioning.DEFAULT_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), batch[0])["params"])
        sharded = jax.device_put(params, partitioning.param_shardings(boxed, mesh, rules))
        rows = jax.device_put(batch, partitioning.batch_sharding(mesh, rules))
        return np.asarray(jax.jit(lambda p, b: model.apply({"params": p}, *b))(sharded, rows))


def test_logits_do_not_depend_on_the_mesh():
    model, params = _init(encoder.EncoderConfig(**TINY), length=16)
    rng = np.random.default_rng(2)
    rows = [pack([rng.integers(3, 128, size=n) for n in (5, 8)], 16) for _ in range(8)]
    batch = tuple(np.concatenate(parts) for parts in zip(*rows))  # tokens, segments, positions
    reference = np.asarray(_apply(model)(params, *batch))
    for mesh_shape in [(1, 1, 1), (8, 1, 1), (2, 2, 2)]:
        np.testing.assert_allclose(_logits_on(mesh_shape, model, params, batch), reference,
                                   atol=2e-5, err_msg=str(mesh_shape))


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_classifier_head_pools_each_row(pooling):
    trunk = encoder.EncoderLM(encoder.EncoderConfig(**TINY))
    head = heads.ClassifierHead(trunk, num_classes=3, pooling=pooling)
    assert model_format.of(head).encoder_only
    tokens = np.random.default_rng(3).integers(3, 128, size=(2, 10)).astype(np.int32)
    segments = np.ones_like(tokens)
    segments[1, 6:] = 0  # the second row is 6 tokens and padding
    params = nn.unbox(jax.jit(head.init)(jax.random.key(0), tokens,
                                         encoder_segment_ids=segments)["params"])
    expected = {"trunk", "classifier"} | ({"pooler"} if pooling == "first" else set())
    assert set(params) == expected and "mlm_head" not in params["trunk"]
    apply_head = _apply(head)
    out = apply_head(params, tokens, encoder_segment_ids=segments)
    assert out.shape == (2, 3) and out.dtype == jnp.float32
    hidden = _apply(trunk, outputs="hidden")(params["trunk"], tokens, segments)
    if pooling == "first":
        pooler = params["pooler"]
        pooled = jnp.tanh(hidden[:, 0] @ pooler["kernel"] + pooler["bias"])
    else:
        pooled = jnp.stack([hidden[0].mean(0), hidden[1, :6].mean(0)])
    classifier = params["classifier"]
    np.testing.assert_allclose(out, pooled @ classifier["kernel"] + classifier["bias"],
                               atol=1e-5)
    # Padding changes nothing: the real tokens never attend to it and pooling skips it.
    repadded = tokens.copy()
    repadded[1, 6:] = 7
    np.testing.assert_allclose(apply_head(params, repadded, encoder_segment_ids=segments), out,
                               atol=1e-5)


# ------------------------------------------------------------------ parity with transformers
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_logits_match_transformers(kind):
    import torch  # test extras (setup.py): the parity test never skips
    import transformers
    sizes = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, hidden_act="gelu", hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    if kind == "bert":
        hf = transformers.BertForMaskedLM(transformers.BertConfig(
            **sizes, max_position_embeddings=40, type_vocab_size=2, layer_norm_eps=1e-12))
        ours = encoder.EncoderConfig(**{**TINY, "vocab_size": 99, "mlp_dim": 48,
                                        "max_length": 40}, scan_layers=False)
    else:
        hf = transformers.RobertaForMaskedLM(transformers.RobertaConfig(
            **sizes, max_position_embeddings=42, type_vocab_size=1, layer_norm_eps=1e-5,
            pad_token_id=1))
        ours = encoder.EncoderConfig(**{**TINY, "vocab_size": 99, "mlp_dim": 48,
                                        "max_length": 42}, **ROBERTA, scan_layers=False)
    with torch.no_grad():  # random everything, so a swapped or missed tensor shows
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.eval()
    # The library's mapping (interop.hf_bert; RoBERTa's one token-type row is folded into
    # the position table), on the state dict with its tied decoder copies.
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    params = hf_bert.params_from_hf(state, hf.config.to_dict(), encoder.EncoderLM(ours))
    tokens = np.random.default_rng(4).integers(3, 99, size=(2, 16))
    types = (np.arange(16) >= 9).astype(np.int64)[None].repeat(2, 0)
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(tokens),
                      token_type_ids=torch.tensor(types) if kind == "bert" else None).logits
    got = _apply(encoder.EncoderLM(ours))(params, tokens.astype(np.int32),
                                          encoder_token_types=types if kind == "bert" else None)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-4)

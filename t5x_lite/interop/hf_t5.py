"""transformers T5 / T5 v1.1 / Flan-T5 / mT5 <-> `EncoderDecoder`.

Both sides are the same network: pre-RMSNorm blocks, unscaled attention logits, one
relative-position-bias table per stack (kept by transformers in block 0), one token embedding
shared by encoder and decoder. The one subtle point is the output layer:

* T5 v1.0 ties it to the embedding and scales the decoder output by 1/sqrt(d_model);
  ours: `tie_embeddings=True` (which scales the same way).
* T5 v1.1 / Flan-T5 / mT5 have an untied `lm_head` and no scaling; ours: `tie_embeddings=False`.

transformers >= 5 always ties `lm_head.weight` to `shared.weight` and records the v1.0
scaling in `scale_decoder_outputs` (older configs say it with `tie_word_embeddings`); a
checkpoint that holds a different `lm_head.weight` is loaded untied. So a missing
`lm_head.weight` means "same as shared", and we export v1.1 models with both tensors.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from t5x_lite.interop import mapping
from t5x_lite.interop.mapping import Rule
from t5x_lite.models import encoder_decoder

logger = logging.getLogger(__name__)

MODEL_TYPES = ("t5", "mt5")
ARCHITECTURES = {"t5": "T5ForConditionalGeneration", "mt5": "MT5ForConditionalGeneration"}
# Copies of `shared.weight` that some checkpoints also store.
_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def scales_decoder_output(hf: Mapping[str, Any]) -> bool:
    """T5 v1.0 behaviour (tied, scaled logits), from either generation of configs."""
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def config_from_hf(hf: Mapping[str, Any], **overrides) -> encoder_decoder.EncoderDecoderConfig:
    """A transformers T5 config (config.json as a dict) -> our config."""
    proj = hf.get("feed_forward_proj", "relu")
    gated = proj.startswith("gated-")
    act = "gelu_new" if proj == "gated-gelu" else proj.split("-")[-1]
    activations = (mapping.activation_from_hf(act),) + (("linear",) if gated else ())
    num_layers = hf.get("num_layers", 6)
    fields = dict(
        vocab_size=hf["vocab_size"],
        embed_dim=hf["d_model"],
        num_encoder_layers=num_layers,
        num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
        num_heads=hf["num_heads"],
        head_dim=hf["d_kv"],
        mlp_dim=hf["d_ff"],
        mlp_activations=activations,
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        tie_embeddings=scales_decoder_output(hf),
        dropout_rate=float(hf.get("dropout_rate", 0.0)),
        format=mapping.format_from_hf(hf, encoder_decoder=True),
    )
    fields.update(overrides)
    return encoder_decoder.EncoderDecoderConfig(**fields)


def config_to_hf(cfg: encoder_decoder.EncoderDecoderConfig,
                 base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our config -> a transformers T5 config dict. `base` (the config an imported model
    came with) keeps everything we do not model: token ids, task params, model_type (mt5)."""
    if cfg.kv_heads != cfg.num_heads:
        raise NotImplementedError("transformers T5 has no grouped-query attention")
    acts = tuple(cfg.mlp_activations)
    if len(acts) == 2 and acts[1] == "linear" and acts[0] != "gelu_exact":
        proj = "gated-gelu" if acts[0] == "gelu" else f"gated-{mapping.activation_to_hf(acts[0])}"
    elif len(acts) == 1:
        proj = mapping.activation_to_hf(acts[0])
    else:
        raise NotImplementedError(f"mlp_activations={acts} has no T5 feed_forward_proj")
    hf = {"initializer_factor": 1.0, "model_type": "t5"}
    hf.update({k: v for k, v in (base or {}).items()
               if k not in ("scale_decoder_outputs", "dense_act_fn", "is_gated_act")})
    hf.update(mapping.format_to_hf(cfg.format, encoder_decoder=True))
    hf.update(
        architectures=[ARCHITECTURES.get(hf["model_type"], ARCHITECTURES["t5"])],
        vocab_size=cfg.vocab_size, d_model=cfg.embed_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
        num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        layer_norm_epsilon=cfg.norm_epsilon, feed_forward_proj=proj,
        # Read by transformers 4.x and 5.x alike as "v1.0 tied + scaled" vs "v1.1".
        tie_word_embeddings=cfg.tie_embeddings, dropout_rate=cfg.dropout_rate,
        is_encoder_decoder=True,
    )
    return hf


def rules(cfg: encoder_decoder.EncoderDecoderConfig) -> list[Rule]:
    """The naming table, for our unscanned layout."""

    def attention(hf: str, ours: tuple[str, ...]) -> list[Rule]:
        names = {"q": "query", "k": "key", "v": "value", "o": "out"}
        return [Rule(f"{hf}.{k}.weight", ours + (v, "kernel"), "linear", 2 if k == "o" else 1)
                for k, v in names.items()]

    def mlp(hf: str, ours: tuple[str, ...]) -> list[Rule]:
        names = ["wi"] if len(cfg.mlp_activations) == 1 else [
            f"wi_{i}" for i in range(len(cfg.mlp_activations))]
        return [Rule(f"{hf}.DenseReluDense.{n}.weight", ours + ("mlp", n, "kernel"), "linear")
                for n in names + ["wo"]]

    out = [Rule("shared.weight", ("token_embed", "embedding"))]
    for stack in ("encoder", "decoder"):
        out += [
            Rule(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 (stack, "relpos_bias", "rel_embedding"), "linear"),
            Rule(f"{stack}.final_layer_norm.weight", (stack, "final_norm", "scale")),
        ]
    for i in range(cfg.num_encoder_layers):
        hf, ours = f"encoder.block.{i}.layer", ("encoder", f"layers_{i}")
        out += attention(f"{hf}.0.SelfAttention", ours + ("self_attention",))
        out += mlp(f"{hf}.1", ours)
        out += [Rule(f"{hf}.0.layer_norm.weight", ours + ("pre_attention_norm", "scale")),
                Rule(f"{hf}.1.layer_norm.weight", ours + ("pre_mlp_norm", "scale"))]
    for i in range(cfg.num_decoder_layers):
        hf, ours = f"decoder.block.{i}.layer", ("decoder", f"layers_{i}")
        out += attention(f"{hf}.0.SelfAttention", ours + ("self_attention",))
        out += attention(f"{hf}.1.EncDecAttention", ours + ("cross_attention",))
        out += mlp(f"{hf}.2", ours)
        out += [Rule(f"{hf}.0.layer_norm.weight", ours + ("pre_self_attention_norm", "scale")),
                Rule(f"{hf}.1.layer_norm.weight", ours + ("pre_cross_attention_norm", "scale")),
                Rule(f"{hf}.2.layer_norm.weight", ours + ("pre_mlp_norm", "scale"))]
    if not cfg.tie_embeddings:
        out.append(Rule("lm_head.weight", ("lm_head", "kernel"), "linear"))
    return out


def params_from_hf(tensors: Mapping[str, np.ndarray], hf: Mapping[str, Any],
                   module: encoder_decoder.EncoderDecoder) -> dict:
    """HF state dict -> our params for `module` (built with `config_from_hf(hf, ...)`)."""
    cfg = module.config
    tensors = dict(tensors)
    if "shared.weight" not in tensors:  # e.g. checkpoints that store the per-stack copies
        alias = next((a for a in _EMBEDDING_ALIASES if a in tensors), None)
        if alias is None:
            raise KeyError("the checkpoint has no token embedding (shared.weight)")
        tensors["shared.weight"] = tensors[alias]
    if cfg.tie_embeddings and _distinct_lm_head(tensors):
        logger.warning("T5 v1.0 config (tied, scaled output) but the checkpoint's lm_head.weight "
                       "differs from shared.weight: using shared.weight, as transformers 4 does")
    if not cfg.tie_embeddings:
        tensors.setdefault("lm_head.weight", tensors["shared.weight"])
    return mapping.to_ours(tensors, rules(cfg), module,
                           ignore=_EMBEDDING_ALIASES + ("lm_head.weight",))


def _distinct_lm_head(tensors: Mapping[str, np.ndarray]) -> bool:
    head = tensors.get("lm_head.weight")
    return head is not None and not np.array_equal(head, tensors["shared.weight"])


def params_to_hf(params: Mapping, module: encoder_decoder.EncoderDecoder,
                 dtype=np.float32) -> dict[str, np.ndarray]:
    """Our params -> a T5ForConditionalGeneration state dict."""
    return mapping.to_hf(params, rules(module.config), module, dtype)

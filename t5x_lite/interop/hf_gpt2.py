"""transformers GPT-2 <-> `DecoderLM` configured GPT-2 style (LayerNorm, learned positions,
biases, one-matrix GELU MLP, tied output layer).

GPT-2 stores dense layers as `Conv1D` weights laid out [in, out] (no transpose needed) and
fuses query, key and value into one `c_attn` matrix, which we split on import and re-fuse on
export.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from t5x_lite.interop import mapping
from t5x_lite.interop.mapping import Rule
from t5x_lite.models import decoder

MODEL_TYPES = ("gpt2",)
_QKV = ("q", "k", "v")


def config_from_hf(hf: Mapping[str, Any], **overrides) -> decoder.DecoderConfig:
    """A transformers GPT-2 config (config.json as a dict) -> our config."""
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise NotImplementedError("only GPT-2's standard 1/sqrt(head_dim) attention scaling")
    if hf.get("add_cross_attention"):
        raise NotImplementedError("GPT-2 with cross-attention is not a decoder-only LM")
    d, heads = hf["n_embd"], hf["n_head"]
    fields = dict(
        vocab_size=hf["vocab_size"], embed_dim=d, num_layers=hf["n_layer"], num_heads=heads,
        head_dim=d // heads, mlp_dim=hf.get("n_inner") or 4 * d,
        mlp_activations=(mapping.activation_from_hf(hf.get("activation_function", "gelu_new")),),
        norm_type="layernorm", norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        position_embedding="learned", max_length=hf.get("n_positions", 1024),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), use_bias=True,
        embedding_init_stddev=hf.get("initializer_range", 0.02),
        format=mapping.format_from_hf(hf),
    )
    fields.update(overrides)
    return decoder.DecoderConfig(**fields)


def config_to_hf(cfg: decoder.DecoderConfig,
                 base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our config -> a transformers GPT2Config dict (`base`: see hf_t5.config_to_hf)."""
    if (cfg.norm_type, cfg.position_embedding, cfg.use_bias) != ("layernorm", "learned", True) \
            or len(cfg.mlp_activations) != 1 or cfg.kv_heads != cfg.num_heads \
            or cfg.num_heads * cfg.head_dim != cfg.embed_dim:
        raise NotImplementedError("not a GPT-2 architecture (LayerNorm, learned positions, "
                                  "biases, ungated MLP, heads * head_dim == embed_dim)")
    hf = {"model_type": "gpt2"}
    hf.update(base or {})
    hf.update(mapping.format_to_hf(cfg.format))
    hf.update(
        architectures=["GPT2LMHeadModel"], vocab_size=cfg.vocab_size, n_embd=cfg.embed_dim,
        n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.mlp_dim,
        activation_function=mapping.activation_to_hf(cfg.mlp_activations[0]),
        layer_norm_epsilon=cfg.norm_epsilon, n_positions=cfg.max_length,
        tie_word_embeddings=cfg.tie_embeddings, scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False, add_cross_attention=False,
    )
    return hf


def rules(cfg: decoder.DecoderConfig) -> list[Rule]:
    """The naming table, for our unscanned layout (`attn.q/k/v` are c_attn's thirds)."""
    out = [Rule("transformer.wte.weight", ("token_embed", "embedding")),
           Rule("transformer.wpe.weight", ("position_embed", "embedding")),
           Rule("transformer.ln_f.weight", ("final_norm", "scale")),
           Rule("transformer.ln_f.bias", ("final_norm", "bias"))]
    if not cfg.tie_embeddings:
        out.append(Rule("lm_head.weight", ("lm_head", "kernel"), "linear"))
    dense = {"attn.q": ("self_attention", "query"), "attn.k": ("self_attention", "key"),
             "attn.v": ("self_attention", "value"), "attn.c_proj": ("self_attention", "out"),
             "mlp.c_fc": ("mlp", "wi"), "mlp.c_proj": ("mlp", "wo")}
    norms = {"ln_1": "pre_attention_norm", "ln_2": "pre_mlp_norm"}
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.h.{i}", (f"layers_{i}",)
        for name, path in dense.items():
            in_axes = 2 if name == "attn.c_proj" else 1
            out += [Rule(f"{hf}.{name}.weight", ours + path + ("kernel",), "conv1d", in_axes),
                    Rule(f"{hf}.{name}.bias", ours + path + ("bias",), "vector")]
        for name, norm in norms.items():
            out += [Rule(f"{hf}.{name}.weight", ours + (norm, "scale")),
                    Rule(f"{hf}.{name}.bias", ours + (norm, "bias"))]
    return out


def params_from_hf(tensors: Mapping[str, np.ndarray], hf: Mapping[str, Any],
                   module: decoder.DecoderLM) -> dict:
    """HF state dict -> our params for `module` (built with `config_from_hf(hf, ...)`)."""
    cfg = module.config
    tensors = dict(tensors)
    for i in range(cfg.num_layers):
        prefix = f"transformer.h.{i}.attn"
        for suffix, axis in (("weight", 1), ("bias", 0)):
            parts = np.split(tensors.pop(f"{prefix}.c_attn.{suffix}"), 3, axis=axis)
            tensors.update({f"{prefix}.{n}.{suffix}": p for n, p in zip(_QKV, parts)})
    # Causal-mask buffers of older checkpoints, and the tied head's copy.
    ignore = ["lm_head.weight"] + [f"transformer.h.{i}.attn.{b}" for i in range(cfg.num_layers)
                                   for b in ("bias", "masked_bias")]
    return mapping.to_ours(tensors, rules(cfg), module, ignore=ignore)


def params_to_hf(params: Mapping, module: decoder.DecoderLM,
                 dtype=np.float32) -> dict[str, np.ndarray]:
    """Our params -> a GPT2LMHeadModel state dict."""
    tensors = mapping.to_hf(params, rules(module.config), module, dtype)
    for i in range(module.config.num_layers):
        prefix = f"transformer.h.{i}.attn"
        for suffix, axis in (("weight", 1), ("bias", 0)):
            parts = [tensors.pop(f"{prefix}.{n}.{suffix}") for n in _QKV]
            tensors[f"{prefix}.c_attn.{suffix}"] = np.concatenate(parts, axis=axis)
    return tensors

"""transformers LLaMA family (LLaMA 1-3 without RoPE scaling, Mistral) <-> `DecoderLM`.

Our default decoder is this architecture: pre-RMSNorm, rotary embeddings in the same
"rotate half" layout transformers uses (so no permutation of q/k rows is needed), SwiGLU MLP
(`gate_proj` -> `wi_0`, `up_proj` -> `wi_1`, `down_proj` -> `wo`), and grouped-query attention
with consecutive query heads sharing a key/value head, as `repeat_kv` does.

Not modelled, so refused on import: RoPE scaling (`rope_type` other than 'default', e.g.
LLaMA 3.1's 'llama3'), and biases on attention but not MLP (or the reverse). Mistral's sliding
window is not modelled either: such a model is exact for sequences up to the window.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from t5x_lite.interop import mapping
from t5x_lite.interop.mapping import Rule
from t5x_lite.models import decoder

logger = logging.getLogger(__name__)

MODEL_TYPES = ("llama", "mistral")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


def _rope_theta(hf: Mapping[str, Any]) -> float:
    """RoPE base from a transformers 5 (`rope_parameters`) or 4 (`rope_theta`,
    `rope_scaling`) config; refuses scaled variants we do not implement."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise NotImplementedError(f"RoPE scaling {kind!r} is not implemented in t5x_lite")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def config_from_hf(hf: Mapping[str, Any], **overrides) -> decoder.DecoderConfig:
    """A transformers LLaMA/Mistral config (config.json as a dict) -> our config."""
    if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
        raise NotImplementedError("attention_bias != mlp_bias: t5x_lite has one use_bias flag")
    if hf.get("sliding_window"):
        logger.warning("sliding_window=%s is not modelled: logits match transformers only for "
                       "sequences up to that length", hf["sliding_window"])
    heads = hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads") or heads
    fields = dict(
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=None if kv_heads == heads else kv_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"],
        mlp_activations=(mapping.activation_from_hf(hf.get("hidden_act", "silu")), "linear"),
        norm_type="rmsnorm",
        norm_epsilon=hf.get("rms_norm_eps", 1e-6),
        position_embedding="rope",
        rope_theta=_rope_theta(hf),
        max_length=hf.get("max_position_embeddings", 2048),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        use_bias=bool(hf.get("attention_bias", False)),
        embedding_init_stddev=hf.get("initializer_range", 0.02),
        format=mapping.format_from_hf(hf),
    )
    fields.update(overrides)
    return decoder.DecoderConfig(**fields)


def config_to_hf(cfg: decoder.DecoderConfig,
                 base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our config -> a transformers LlamaConfig dict (`base`: see hf_t5.config_to_hf)."""
    acts = tuple(cfg.mlp_activations)
    if (cfg.norm_type, cfg.position_embedding) != ("rmsnorm", "rope") or len(acts) != 2 \
            or acts[1] != "linear":
        raise NotImplementedError("only RMSNorm + RoPE + gated-MLP decoders are LLaMA models")
    hf = {"model_type": "llama"}
    hf.update({k: v for k, v in (base or {}).items() if k not in ("rope_scaling",)})
    hf.update(mapping.format_to_hf(cfg.format))
    hf.update(
        architectures=[ARCHITECTURES.get(hf["model_type"], ARCHITECTURES["llama"])],
        vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, intermediate_size=cfg.mlp_dim,
        hidden_act=mapping.activation_to_hf(acts[0]), rms_norm_eps=cfg.norm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        rope_theta=cfg.rope_theta,  # what transformers 4 reads
        max_position_embeddings=cfg.max_length, tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias,
    )
    return hf


def rules(cfg: decoder.DecoderConfig) -> list[Rule]:
    """The naming table, for our unscanned layout."""
    out = [Rule("model.embed_tokens.weight", ("token_embed", "embedding")),
           Rule("model.norm.weight", ("final_norm", "scale"))]
    if not cfg.tie_embeddings:
        out.append(Rule("lm_head.weight", ("lm_head", "kernel"), "linear"))
    projections = {"self_attn.q_proj": ("self_attention", "query"),
                   "self_attn.k_proj": ("self_attention", "key"),
                   "self_attn.v_proj": ("self_attention", "value"),
                   "self_attn.o_proj": ("self_attention", "out"),
                   "mlp.gate_proj": ("mlp", "wi_0"), "mlp.up_proj": ("mlp", "wi_1"),
                   "mlp.down_proj": ("mlp", "wo")}
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", (f"layers_{i}",)
        out += [Rule(f"{hf}.input_layernorm.weight", ours + ("pre_attention_norm", "scale")),
                Rule(f"{hf}.post_attention_layernorm.weight", ours + ("pre_mlp_norm", "scale"))]
        for name, path in projections.items():
            in_axes = 2 if name.endswith("o_proj") else 1
            out.append(Rule(f"{hf}.{name}.weight", ours + path + ("kernel",), "linear", in_axes))
            if cfg.use_bias:
                out.append(Rule(f"{hf}.{name}.bias", ours + path + ("bias",), "vector"))
    return out


def params_from_hf(tensors: Mapping[str, np.ndarray], hf: Mapping[str, Any],
                   module: decoder.DecoderLM) -> dict:
    """HF state dict -> our params for `module` (built with `config_from_hf(hf, ...)`)."""
    cfg = module.config
    # Buffers some checkpoints carry, and the tied head's copy.
    ignore = ["model.rotary_emb.inv_freq", "lm_head.weight"] + [
        f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(cfg.num_layers)]
    return mapping.to_ours(tensors, rules(cfg), module, ignore=ignore)


def params_to_hf(params: Mapping, module: decoder.DecoderLM,
                 dtype=np.float32) -> dict[str, np.ndarray]:
    """Our params -> a LlamaForCausalLM state dict."""
    return mapping.to_hf(params, rules(module.config), module, dtype)

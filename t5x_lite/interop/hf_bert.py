"""transformers BERT / RoBERTa <-> `EncoderLM`.

Both sides are the same network (see models/encoder.py): post-LayerNorm blocks with biases,
learned absolute positions, an embedding LayerNorm, and a masked-LM head (dense, activation,
LayerNorm, logits off the tied word embeddings plus a bias). What maps to what:

* `BertForMaskedLM` / `RobertaForMaskedLM` -> `EncoderLM` with `mlm_head=True`: logits match.
* `BertForPreTraining` (MLM head + pooler + `cls.seq_relationship`) -> `mlm_head=True,
  next_sentence_head=True`: the MLM logits match `prediction_logits` and
  `next_sentence_logits` at the first position match `seq_relationship_logits`.
* `BertModel` / `RobertaModel` (no MLM head in the checkpoint) -> `mlm_head=False`: the final
  hidden states (`outputs='hidden'`) match `last_hidden_state`. A pooler (`pooler.dense`, the
  tanh layer over [CLS]) without a next-sentence head has no place in an `EncoderLM` and is
  dropped with a warning; `heads.ClassifierHead(pooling='first')` starts a fresh pooler.
  Exporting an `mlm_head=False` model writes a `BertModel` / `RobertaModel` without a pooler
  (transformers initialises one at random and says so).
* The model type is fixed by our config: `position_offset=0` is BERT, `position_offset > 0`
  is RoBERTa, whose positions count from `pad_token_id + 1` (so `pad_id` must be
  `position_offset - 1`). RoBERTa's one token-type row is a constant added to every token:
  on import it is folded into the position table (`type_vocab_size=0`), on export a zero row
  is written back (any `type_vocab_size=1` model is handled this way).
* transformers' RoBERTa derives positions from the input ids (tokens equal to the pad id are
  skipped); ours come from `encoder_positions` / the segment layout. They agree on rows that
  hold the pad id only as right padding, i.e. always for well-formed inputs.

Special ids (pad, eos, unk, bos, mask), for each id the first source that has it:
1. config.json: `pad_token_id`, `eos_token_id`, `bos_token_id`;
2. the tokenizer files saved next to the model (`mapping.tokenizer_special_ids`): pad_token;
   sep_token (else eos_token) as eos, since [SEP] / </s> ends every segment; cls_token (else
   bos_token) as bos; unk_token; mask_token;
3. the released checkpoints' vocabularies, with a warning: BERT [UNK] 100, [CLS] 101,
   [SEP] 102, [MASK] 103; RoBERTa <s> 0, <pad> 1, </s> 2, <unk> 3 and <mask> the last id
   (50264 of 50265). An id that does not fit the vocabulary is left unset (eos: the pad id).
Export writes pad / eos / bos into config.json; unk and mask are not config fields, so
keep the tokenizer files with an exported model.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from t5x_lite.interop import mapping
from t5x_lite.interop.mapping import Rule
from t5x_lite.models import encoder, model_format

logger = logging.getLogger(__name__)

MODEL_TYPES = ("bert", "roberta")
ARCHITECTURES = {("bert", True): "BertForMaskedLM", ("bert", False): "BertModel",
                 ("roberta", True): "RobertaForMaskedLM", ("roberta", False): "RobertaModel"}
# The MLM head's dense, LayerNorm, output bias and (tied) decoder, by model type.
_HEADS = {"bert": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                   "cls.predictions.bias", "cls.predictions.decoder"),
          "roberta": ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias", "lm_head.decoder")}
# BERT's next-sentence head: the pooler (under the model's prefix) and the classifier.
_NEXT_SENTENCE = {"pooler.dense": "pooler", "cls.seq_relationship": "classifier"}
# Tensors of those heads, dropped with a warning when the model has no next-sentence head.
_DROPPED = tuple(f"{name}.{kind}" for name in _NEXT_SENTENCE for kind in ("weight", "bias"))
# Released vocabularies' ids (rule 3 of the module docstring); -1: the last id.
_CONVENTIONS = {"bert": dict(pad_id=0, unk_id=100, bos_id=101, eos_id=102, mask_id=103),
                "roberta": dict(bos_id=0, pad_id=1, eos_id=2, unk_id=3, mask_id=-1)}
# (config.json key, tokenizer roles) for each of our ids.
_ID_SOURCES = {"pad_id": ("pad_token_id", ("pad_token",)),
               "eos_id": ("eos_token_id", ("sep_token", "eos_token")),
               "bos_id": ("bos_token_id", ("cls_token", "bos_token")),
               "unk_id": (None, ("unk_token",)),
               "mask_id": (None, ("mask_token",))}


def model_type_of(cfg: encoder.EncoderConfig) -> str:
    return "roberta" if cfg.position_offset else "bert"


def format_from_hf(hf: Mapping[str, Any],
                   special_tokens: Mapping[str, int] | None = None) -> model_format.ModelFormat:
    """Our special ids from a BERT/RoBERTa config and its tokenizer's special tokens (the
    rule of the module docstring)."""
    tokens = dict(special_tokens or {})
    vocab_size = hf["vocab_size"]
    ids, guessed = {}, []
    for name, (config_key, roles) in _ID_SOURCES.items():
        value = hf.get(config_key) if config_key else None
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is None:
            value = next((tokens[r] for r in roles if r in tokens), None)
        if value is None:
            value = _CONVENTIONS[hf["model_type"]][name]
            value = vocab_size + value if value < 0 else value
            if not 0 <= value < vocab_size:
                value = None
            else:
                guessed.append(f"{name}={value}")
        ids[name] = None if value is None else int(value)
    if guessed:
        logger.warning("no config or tokenizer entry for %s: using the released %s "
                       "vocabulary's ids", ", ".join(guessed), hf["model_type"])
    pad = 0 if ids["pad_id"] is None else ids["pad_id"]
    eos = pad if ids["eos_id"] is None else ids["eos_id"]
    return model_format.ModelFormat(pad_id=pad, eos_id=eos, unk_id=ids["unk_id"],
                                    bos_id=ids["bos_id"], decoder_start_id=pad,
                                    mask_id=ids["mask_id"])


def _has_mlm_head(hf: Mapping[str, Any]) -> bool:
    """Without the checkpoint: a bare `BertModel` / `RobertaModel` has no MLM head."""
    bare = {ARCHITECTURES[(hf["model_type"], False)]}
    return not (set(hf.get("architectures") or ()) and set(hf["architectures"]) <= bare)


def import_options(hf_dir: str, hf: Mapping[str, Any],
                   tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """What `config_from_hf` needs beyond config.json: the tokenizer's special ids, and
    whether the checkpoint holds an MLM head (a bare BertModel's does not)."""
    dense = _HEADS[hf["model_type"]][0]
    return {"special_tokens": mapping.tokenizer_special_ids(hf_dir),
            "mlm_head": f"{dense}.weight" in tensors,
            "next_sentence_head": "cls.seq_relationship.weight" in tensors}


def config_from_hf(hf: Mapping[str, Any], *, special_tokens: Mapping[str, int] | None = None,
                   **overrides) -> encoder.EncoderConfig:
    """A transformers BERT / RoBERTa config (config.json as a dict) -> our config.
    `special_tokens`: {role: id} of its tokenizer (see `format_from_hf`)."""
    model_type = hf["model_type"]
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise NotImplementedError(f"position_embedding_type={hf['position_embedding_type']!r}"
                                  ": only absolute positions are implemented")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise NotImplementedError("a BERT used as a (cross-attending) decoder is not an "
                                  "encoder-only model")
    if hf.get("tie_word_embeddings", True) is False:
        raise NotImplementedError("an MLM decoder untied from the word embeddings")
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    if d % heads:
        raise ValueError(f"hidden_size={d} is not a multiple of num_attention_heads={heads}")
    activation = mapping.activation_from_hf(hf.get("hidden_act", "gelu"))
    types = hf.get("type_vocab_size", 2)
    offset = 0
    if model_type == "roberta":
        if hf.get("pad_token_id") is None:
            raise ValueError("a RoBERTa config needs pad_token_id: positions count from it")
        offset = int(hf["pad_token_id"]) + 1
    fields = dict(
        vocab_size=hf["vocab_size"], embed_dim=d, num_layers=hf["num_hidden_layers"],
        num_heads=heads, head_dim=d // heads, mlp_dim=hf["intermediate_size"],
        mlp_activations=(activation,),
        # RobertaLMHead applies the exact GELU whatever hidden_act says.
        head_activation="gelu_exact" if model_type == "roberta" else activation,
        norm_type="layernorm", norm_epsilon=hf.get("layer_norm_eps", 1e-12),
        max_length=hf.get("max_position_embeddings", 512),
        type_vocab_size=0 if types == 1 else types, position_offset=offset, use_bias=True,
        post_norm=True, mlm_head=_has_mlm_head(hf),
        init_stddev=hf.get("initializer_range", 0.02),
        dropout_rate=float(hf.get("hidden_dropout_prob", 0.0)),
        format=format_from_hf(hf, special_tokens),
    )
    fields.update(overrides)
    return encoder.EncoderConfig(**fields)


def config_to_hf(cfg: encoder.EncoderConfig,
                 base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our config -> a transformers BertConfig / RobertaConfig dict (`base`: see
    hf_t5.config_to_hf)."""
    model_type = model_type_of(cfg)
    acts = tuple(cfg.mlp_activations)
    if (cfg.norm_type, cfg.post_norm, cfg.use_bias, len(acts)) != ("layernorm", True, True, 1) \
            or cfg.num_heads * cfg.head_dim != cfg.embed_dim:
        raise NotImplementedError("not a BERT architecture (post-LayerNorm, biases, ungated "
                                  "MLP, heads * head_dim == embed_dim)")
    head_act = "gelu_exact" if model_type == "roberta" else acts[0]
    if cfg.mlm_head and cfg.head_activation != head_act:
        raise NotImplementedError(f"head_activation={cfg.head_activation!r}: transformers' "
                                  f"{model_type} head applies {head_act!r}")
    if cfg.next_sentence_head and (model_type != "bert" or not cfg.mlm_head):
        raise NotImplementedError("a next-sentence head is exported as BertForPreTraining: "
                                  "it needs BERT (position_offset=0) with its MLM head")
    if model_type == "roberta" and cfg.format.pad_id != cfg.position_offset - 1:
        raise NotImplementedError(
            f"position_offset={cfg.position_offset} with pad_id={cfg.format.pad_id}: RoBERTa "
            "counts positions from pad_token_id + 1")
    if base and base.get("model_type") in MODEL_TYPES and base["model_type"] != model_type:
        raise ValueError(f"a {base['model_type']} config cannot describe a model with "
                         f"position_offset={cfg.position_offset}")
    hf = {"model_type": model_type}
    hf.update({k: v for k, v in (base or {}).items() if k != "position_embedding_type"})
    hf.update(mapping.format_to_hf(cfg.format))
    hf.update(
        model_type=model_type,
        architectures=["BertForPreTraining" if cfg.next_sentence_head
                       else ARCHITECTURES[(model_type, cfg.mlm_head)]],
        vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.mlp_dim, hidden_act=mapping.activation_to_hf(acts[0]),
        layer_norm_eps=cfg.norm_epsilon, max_position_embeddings=cfg.max_length,
        type_vocab_size=cfg.type_vocab_size or 1, initializer_range=cfg.init_stddev,
        hidden_dropout_prob=cfg.dropout_rate, attention_probs_dropout_prob=cfg.dropout_rate,
        tie_word_embeddings=True, is_decoder=False, add_cross_attention=False,
    )
    return hf


def rules(cfg: encoder.EncoderConfig, model_type: str, prefix: str) -> list[Rule]:
    """The naming table, for our unscanned layout; `prefix` is 'bert.' / 'roberta.' in a
    *ForMaskedLM checkpoint, '' in a bare model's."""
    emb = f"{prefix}embeddings."
    out = [Rule(emb + "word_embeddings.weight", ("token_embed", "embedding")),
           Rule(emb + "position_embeddings.weight", ("position_embed", "embedding")),
           Rule(emb + "LayerNorm.weight", ("embed_norm", "scale")),
           Rule(emb + "LayerNorm.bias", ("embed_norm", "bias"))]
    if cfg.type_vocab_size:
        out.append(Rule(emb + "token_type_embeddings.weight", ("token_type_embed", "embedding")))
    dense = {"attention.self.query": ("self_attention", "query"),
             "attention.self.key": ("self_attention", "key"),
             "attention.self.value": ("self_attention", "value"),
             "attention.output.dense": ("self_attention", "out"),
             "intermediate.dense": ("mlp", "wi"), "output.dense": ("mlp", "wo")}
    norms = {"attention.output.LayerNorm": "attention_norm", "output.LayerNorm": "mlp_norm"}
    for i in range(cfg.num_layers):
        hf, ours = f"{prefix}encoder.layer.{i}.", (f"layers_{i}",)
        for name, path in dense.items():
            in_axes = 2 if name == "attention.output.dense" else 1
            out += [Rule(f"{hf}{name}.weight", ours + path + ("kernel",), "linear", in_axes),
                    Rule(f"{hf}{name}.bias", ours + path + ("bias",), "vector")]
        for name, norm in norms.items():
            out += [Rule(f"{hf}{name}.weight", ours + (norm, "scale")),
                    Rule(f"{hf}{name}.bias", ours + (norm, "bias"))]
    if cfg.mlm_head:
        head_dense, head_norm, bias, _ = _HEADS[model_type]
        head = ("mlm_head",)
        out += [Rule(f"{head_dense}.weight", head + ("transform", "kernel"), "linear"),
                Rule(f"{head_dense}.bias", head + ("transform", "bias")),
                Rule(f"{head_norm}.weight", head + ("transform_norm", "scale")),
                Rule(f"{head_norm}.bias", head + ("transform_norm", "bias")),
                Rule(bias, head + ("output_bias",))]
    if cfg.next_sentence_head:
        for name, ours in _NEXT_SENTENCE.items():
            hf = prefix + name if name.startswith("pooler") else name
            path = ("next_sentence_head", ours)
            out += [Rule(f"{hf}.weight", path + ("kernel",), "linear"),
                    Rule(f"{hf}.bias", path + ("bias",))]
    return out


def params_from_hf(tensors: Mapping[str, np.ndarray], hf: Mapping[str, Any],
                   module: encoder.EncoderLM) -> dict:
    """HF state dict -> our params for `module` (built with `config_from_hf(hf, ...)`)."""
    cfg, model_type = module.config, hf["model_type"]
    # Checkpoints converted from TensorFlow name LayerNorm parameters gamma / beta.
    tensors = {k.replace("LayerNorm.gamma", "LayerNorm.weight")
                .replace("LayerNorm.beta", "LayerNorm.bias"): v for k, v in tensors.items()}
    prefix = f"{model_type}."
    if prefix + "embeddings.word_embeddings.weight" not in tensors:
        prefix = ""
    emb = f"{prefix}embeddings."
    words = np.asarray(tensors[emb + "word_embeddings.weight"])
    if not cfg.type_vocab_size:  # one constant token type: fold it into every position
        types = np.asarray(tensors.pop(emb + "token_type_embeddings.weight"))
        if types.shape[0] != 1:
            raise ValueError(f"{types.shape[0]} token types, but type_vocab_size=0")
        positions = np.asarray(tensors[emb + "position_embeddings.weight"], np.float32)
        tensors[emb + "position_embeddings.weight"] = positions + types[0].astype(np.float32)
    _, _, bias, decoder = _HEADS[model_type]
    ignore = [emb + "position_ids", emb + "token_type_ids", f"{decoder}.bias"]
    if cfg.mlm_head and f"{decoder}.weight" in tensors:
        if not np.array_equal(np.asarray(tensors[f"{decoder}.weight"]), words):
            raise NotImplementedError(f"{decoder}.weight differs from the word embeddings: an "
                                      "untied MLM decoder is not implemented")
        ignore.append(f"{decoder}.weight")
    dropped = sorted(k for k in tensors
                     if k.removeprefix(prefix) in _DROPPED and not cfg.next_sentence_head)
    if dropped:
        logger.warning("dropping %s: an EncoderLM has no pooler or next-sentence head",
                       ", ".join(dropped))
    return mapping.to_ours(tensors, rules(cfg, model_type, prefix), module,
                           ignore=ignore + dropped)


def params_to_hf(params: Mapping, module: encoder.EncoderLM,
                 dtype=np.float32) -> dict[str, np.ndarray]:
    """Our params -> a *ForMaskedLM state dict (a bare *Model's with `mlm_head=False`, a
    BertForPreTraining's with `next_sentence_head`)."""
    cfg = module.config
    model_type = model_type_of(cfg)
    prefix = f"{model_type}." if cfg.mlm_head else ""
    tensors = mapping.to_hf(params, rules(cfg, model_type, prefix), module, dtype)
    if not cfg.type_vocab_size:
        tensors[f"{prefix}embeddings.token_type_embeddings.weight"] = np.zeros(
            (1, cfg.embed_dim), dtype)
    return tensors

"""Table-driven parameter conversion shared by the Hugging Face families (hf_t5, hf_llama, ...).

A family lists one `Rule` per tensor: its transformers state-dict key, its path in our
*unscanned* parameter tree (`layers_0`, `layers_1`, ...), and how the array is laid out on
each side. Everything else (shape checks, scanned <-> unscanned layers, reporting keys nobody
claimed) is done here once, so a family module is just its naming table.
"""
from __future__ import annotations

import json
from typing import Iterable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from t5x_lite import paths
from t5x_lite.models import model_format
from t5x_lite.models.stacking import stack_layers, unscanned, unstack_layers

Path = tuple[str, ...]


class Rule(NamedTuple):
    """One tensor. kind:
    'same'   identical layout (embeddings, norm scales);
    'vector' HF keeps a flat vector, ours may split it ([heads*head_dim] <-> [heads, head_dim]);
    'linear' torch.nn.Linear weight [out, in] <-> our kernel [*in_axes, *out_axes];
    'conv1d' GPT-2's Conv1D weight [in, out] <-> our kernel [*in_axes, *out_axes].
    `in_axes` is how many leading axes of our kernel are inputs (2 for attention `out`).
    """

    hf: str
    ours: Path
    kind: str = "same"
    in_axes: int = 1


def abstract_params(module: nn.Module):
    """The module's params as a tree of ShapeDtypeStructs (nothing allocated)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    features = {"decoder_input_tokens": tokens}
    if model_format.of(module).architecture != "decoder":  # encoder-decoder or encoder-only
        features["encoder_input_tokens"] = tokens
    return nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), **features))["params"])


def param_shapes(module: nn.Module) -> dict[Path, tuple[int, ...]]:
    """Flat {path: shape} of a module's parameters."""
    return {p: x.shape for p, x in traverse_util.flatten_dict(abstract_params(module)).items()}


def to_ours(tensors: Mapping[str, np.ndarray], rules: Sequence[Rule], module: nn.Module,
            *, ignore: Iterable[str] = (), dtype=np.float32) -> dict:
    """HF state dict -> our nested params for `module` (scanned if its config says so).

    Raises if a rule's tensor is missing or has the wrong size, if one of our parameters has
    no rule, or if the checkpoint holds a tensor neither claimed nor in `ignore` (which would
    mean an architecture feature we do not model).
    """
    shapes = param_shapes(unscanned(module))
    flat = {}
    for rule in rules:
        if rule.hf not in tensors:
            raise KeyError(f"the checkpoint has no tensor {rule.hf!r} (needed for "
                           f"{'/'.join(rule.ours)})")
        flat[rule.ours] = _array_to_ours(np.asarray(tensors[rule.hf]), rule,
                                         shapes[rule.ours]).astype(dtype)
    unfilled = sorted("/".join(p) for p in set(shapes) - set(flat))
    if unfilled:
        raise ValueError(f"no checkpoint tensor maps to our parameters {unfilled}")
    unused = sorted(set(tensors) - {r.hf for r in rules} - set(ignore))
    if unused:
        raise ValueError(f"the checkpoint has tensors this converter does not understand "
                         f"(an unsupported architecture variant?): {unused[:8]}")
    if module.config.scan_layers:
        flat = stack_layers(flat)
    return traverse_util.unflatten_dict(flat)


def to_hf(params: Mapping, rules: Sequence[Rule], module: nn.Module,
          dtype=np.float32) -> dict[str, np.ndarray]:
    """Our params (scanned or not) -> HF state dict {key: contiguous numpy array}."""
    flat = {p: np.asarray(jax.device_get(x)) for p, x in traverse_util.flatten_dict(
        dict(params)).items()}
    if module.config.scan_layers:
        flat = unstack_layers(flat)
    shapes = param_shapes(unscanned(module))
    if set(flat) != set(shapes):
        raise ValueError("the params do not match the model config: "
                         f"{sorted('/'.join(p) for p in set(flat) ^ set(shapes))[:8]}")
    return {r.hf: np.ascontiguousarray(_array_to_hf(flat[r.ours], r)).astype(dtype)
            for r in rules}


def _array_to_ours(x: np.ndarray, rule: Rule, shape: tuple[int, ...]) -> np.ndarray:
    if rule.kind == "linear":
        x = x.T
    if x.size != int(np.prod(shape)):
        raise ValueError(f"{rule.hf}: shape {x.shape} does not fit our "
                         f"{'/'.join(rule.ours)} {shape}")
    return x.reshape(shape)


def _array_to_hf(x: np.ndarray, rule: Rule) -> np.ndarray:
    if rule.kind in ("linear", "conv1d"):
        x = x.reshape(int(np.prod(x.shape[:rule.in_axes])), -1)
        return x.T if rule.kind == "linear" else x
    return x.reshape(-1) if rule.kind == "vector" else x


# transformers activation names <-> ours (layers.ACTIVATIONS).
HF_ACTIVATIONS = {
    "relu": "relu",
    "gelu_new": "gelu",  # tanh approximation
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "gelu": "gelu_exact",
    "silu": "silu",
    "swish": "silu",
}
OUR_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_new", "gelu_exact": "gelu", "silu": "silu"}


def activation_from_hf(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise NotImplementedError(f"activation {name!r} has no t5x_lite equivalent "
                                  f"(supported: {sorted(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


def activation_to_hf(name: str) -> str:
    if name not in OUR_ACTIVATIONS:
        raise NotImplementedError(f"activation {name!r} has no transformers equivalent")
    return OUR_ACTIVATIONS[name]


# ----------------------------------------------------------------------------- special ids
def format_from_hf(hf: Mapping, *, encoder_decoder: bool = False) -> model_format.ModelFormat:
    """The special ids of a transformers config as our model format. Rows of an imported
    decoder-only model start with its BOS when it has one (LLaMA 1, GPT-2's <|endoftext|>), as
    its tokenizer or lm-eval-harness feed it; a model without a pad id pads with its EOS (pad
    ids are only ever fillers: loss and attention masks never read them)."""
    eos = hf.get("eos_token_id")
    if isinstance(eos, (list, tuple)):  # LLaMA 3 lists several stop ids; we stop at the first
        eos = eos[0]
    eos = 1 if eos is None else int(eos)
    pad = hf.get("pad_token_id")
    pad = eos if pad is None else int(pad)
    if encoder_decoder:
        start = hf.get("decoder_start_token_id")
        return model_format.ModelFormat(pad_id=pad, eos_id=eos, unk_id=None,
                                        decoder_start_id=pad if start is None else int(start))
    bos = hf.get("bos_token_id")
    return model_format.ModelFormat(pad_id=pad, eos_id=eos, unk_id=None,
                                    bos_id=None if bos is None else int(bos),
                                    decoder_start_id=pad)


def format_to_hf(fmt: model_format.ModelFormat, *, encoder_decoder: bool = False) -> dict:
    """Our model format as a transformers config's token-id fields."""
    ids = {"pad_token_id": fmt.pad_id, "eos_token_id": fmt.eos_id}
    if encoder_decoder:
        ids["decoder_start_token_id"] = fmt.decoder_start_id
    else:
        ids["bos_token_id"] = fmt.bos_id
    return ids


# The roles a transformers tokenizer config names special tokens by.
TOKEN_ROLES = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token", "bos_token",
               "eos_token")


def tokenizer_special_ids(hf_dir: str) -> dict[str, int]:
    """{role: id} for the special tokens (TOKEN_ROLES) that the tokenizer files saved in a
    transformers directory name; {} when it holds none. Token strings come from
    tokenizer_config.json (else special_tokens_map.json); ids from, in increasing precedence,
    vocab.txt (WordPiece: the line number), vocab.json, tokenizer.json's vocabulary and added
    tokens, and tokenizer_config.json's `added_tokens_decoder`."""
    directory = paths.as_path(hf_dir)

    def load(name):
        path = directory / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    names = {}
    for source in (load("special_tokens_map.json"), load("tokenizer_config.json")):
        for role in TOKEN_ROLES:
            value = source.get(role)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                names[role] = value
    if not names:
        return {}
    ids: dict[str, int] = {}
    if (directory / "vocab.txt").exists():
        lines = (directory / "vocab.txt").read_text(encoding="utf-8").split("\n")
        ids.update((line.rstrip("\r"), i) for i, line in reversed(list(enumerate(lines))))
    ids.update(load("vocab.json"))
    tokenizer = load("tokenizer.json")
    vocab = tokenizer.get("model", {}).get("vocab") or {}
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...] in id order
        vocab = {piece[0]: i for i, piece in enumerate(vocab)}
    ids.update(vocab)
    ids.update((t["content"], t["id"]) for t in tokenizer.get("added_tokens", []))
    ids.update((t["content"], int(i)) for i, t in
               load("tokenizer_config.json").get("added_tokens_decoder", {}).items())
    return {role: int(ids[name]) for role, name in names.items() if name in ids}

"""Import transformers checkpoints into a t5x_lite model directory, and export back.

A converted model directory holds:

    params/            params-only orbax checkpoint (`checkpoints.save_params`)
    model.gin          the architecture as gin, binding `train_loop.train.init_from` to
                       params/, so `t5x-lite train --gin_file=MODEL_DIR/model.gin ...`
                       fine-tunes from the imported weights
    model_config.json  the same architecture as JSON (read without gin by `load_model` and
                       `export_hf`), plus the transformers config it came from, so an
                       export keeps its token ids and other fields we do not model

Reading needs only `safetensors` (numpy API; bfloat16 via ml_dtypes); torch is needed only
for the legacy `pytorch_model.bin` format. Nothing here needs `transformers` itself.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from t5x_lite import checkpoints, paths
from t5x_lite.interop import hf_bert, hf_gpt2, hf_llama, hf_t5, mapping
from t5x_lite.models import decoder, encoder, encoder_decoder, model_format

PARAMS_DIR = "params"
MODEL_GIN = "model.gin"
MODEL_CONFIG = "model_config.json"
TRAIN_CHECKPOINTS = "checkpoints"  # where `train` keeps a run's checkpoints

_FAMILIES = [hf_t5, hf_llama, hf_gpt2, hf_bert]
# Our model class -> (its config class, its gin module).
_MODELS = {
    "EncoderDecoder": (encoder_decoder.EncoderDecoder, encoder_decoder.EncoderDecoderConfig,
                       "encoder_decoder"),
    "DecoderLM": (decoder.DecoderLM, decoder.DecoderConfig, "decoder"),
    "EncoderLM": (encoder.EncoderLM, encoder.EncoderConfig, "encoder"),
}


def family_for(hf_config: Mapping[str, Any]):
    """The converter module for a transformers config's `model_type`."""
    model_type = hf_config.get("model_type")
    for family in _FAMILIES:
        if model_type in family.MODEL_TYPES:
            return family
    supported = sorted(t for f in _FAMILIES for t in f.MODEL_TYPES)
    raise NotImplementedError(f"transformers model_type {model_type!r} is not supported "
                              f"(supported: {', '.join(supported)})")


def _family_for_module(module: nn.Module, base: Mapping[str, Any] | None):
    if base is not None:
        return family_for(base)
    fmt = model_format.of(module)
    if fmt.encoder_decoder:
        return hf_t5
    if fmt.encoder_only:
        return hf_bert
    cfg = module.config
    return hf_gpt2 if cfg.position_embedding == "learned" else hf_llama


# ----------------------------------------------------------------------------- reading
def read_hf_config(hf_dir: str) -> dict[str, Any]:
    return json.loads((paths.as_path(hf_dir) / "config.json").read_text())


def read_hf_weights(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of a `save_pretrained` directory as numpy arrays: model.safetensors,
    its sharded form (model.safetensors.index.json), or pytorch_model.bin (needs torch)."""
    from safetensors.numpy import load_file

    directory = paths.as_path(hf_dir)
    for index_name, loader in (("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", _load_torch)):
        index = directory / index_name
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            tensors = {}
            for shard in shards:
                tensors.update(_load_local(loader, directory / shard))
            return tensors
    for name, loader in (("model.safetensors", load_file), ("pytorch_model.bin", _load_torch)):
        if (directory / name).exists():
            return _load_local(loader, directory / name)
    raise FileNotFoundError(f"{hf_dir}: no model.safetensors or pytorch_model.bin")


def _load_local(loader, path) -> dict[str, np.ndarray]:
    """`loader` (safetensors' load_file, torch.load) needs a local file: gs:// is copied."""
    with paths.local_file(path) as local:
        return loader(local)


def _load_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"{path} is a torch pickle: install torch to read it, or re-save "
                          "the model with safetensors") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}


# ----------------------------------------------------------------------------- import
def import_hf(hf_dir: str, model_dir: str, *, scan_layers: bool = True) -> nn.Module:
    """Converts a transformers `save_pretrained` directory into `model_dir` (see the module
    docstring for what it holds). Returns our module; params are float32."""
    hf_config = read_hf_config(hf_dir)
    family = family_for(hf_config)
    tensors = read_hf_weights(hf_dir)
    # What a family needs beyond config.json (hf_bert: the tokenizer's special ids, and
    # whether the checkpoint holds an MLM head).
    options = (family.import_options(hf_dir, hf_config, tensors)
               if hasattr(family, "import_options") else {})
    cfg = family.config_from_hf(hf_config, scan_layers=scan_layers, **options)
    module = _module_for_config(cfg)
    params = family.params_from_hf(tensors, hf_config, module)
    directory = paths.ensure_dir(model_dir)
    checkpoints.save_params(str(directory / PARAMS_DIR), params)
    write_model_config(model_dir, module, hf_config)
    # Absolute (or gs://) paths: the file is read from other working directories.
    paths.atomic_write_text(directory / MODEL_GIN, model_gin(
        module, init_from=paths.absolute(directory / PARAMS_DIR),
        model_dir=paths.absolute(directory),
        source=f"{paths.absolute(hf_dir)} (model_type {hf_config.get('model_type')!r})"))
    return module


def _module_for_config(cfg) -> nn.Module:
    for model_cls, config_cls, _ in _MODELS.values():
        if isinstance(cfg, config_cls):
            return model_cls(cfg)
    raise TypeError(f"not a t5x_lite model config: {cfg!r}")


def write_model_config(model_dir: str, module: nn.Module,
                       hf_config: Mapping[str, Any] | None = None) -> None:
    record = {"model": type(module).__name__, "config": dataclasses.asdict(module.config),
              "hf_config": dict(hf_config) if hf_config else None}
    paths.atomic_write_text(paths.as_path(model_dir) / MODEL_CONFIG, json.dumps(record, indent=2))


def read_model_config(model_dir: str) -> tuple[nn.Module, dict | None]:
    """(our module, the transformers config it was imported from or None)."""
    record = json.loads((paths.as_path(model_dir) / MODEL_CONFIG).read_text())
    model_cls, config_cls, _ = _MODELS[record["model"]]
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record["config"].items()}
    if isinstance(fields.get("format"), dict):
        fields["format"] = model_format.ModelFormat.from_dict(fields["format"])
    return model_cls(config_cls(**fields)), record.get("hf_config")


def model_gin(module: nn.Module, *, init_from: str | None = None, source: str = "",
              model_dir: str | None = None) -> str:
    """A models/*.gin style file that rebuilds `module`, its format included (and starts
    training from `init_from`, a params-only checkpoint, when given). With `model_dir` it also
    binds MODEL_DIR there and VOCABULARY to None, so `t5x-lite infer|score` run on this file
    alone (on token ids; text needs a vocabulary file as well)."""
    name, (_, config_cls, gin_module) = next(
        (n, m) for n, m in _MODELS.items() if isinstance(module, m[0]))
    cfg = module.config
    macros = {"VOCAB_SIZE": cfg.vocab_size, "ACTIVATION_DTYPE": cfg.dtype,
              "DROPOUT_RATE": cfg.dropout_rate}
    by_macro = {"vocab_size": "VOCAB_SIZE", "dtype": "ACTIVATION_DTYPE",
                "dropout_rate": "DROPOUT_RATE"}
    lines = ["# Generated by `t5x-lite convert`" + (f" from {source}." if source else "."),
             "# Fine-tune: t5x-lite train --gin_file=THIS_FILE --gin_file=<data>.gin "
             "--gin_file=<run>.gin --gin.MODEL_DIR=...",
             "from __gin__ import dynamic_registration",
             f"import t5x_lite.models.{gin_module} as {gin_module}",
             "import t5x_lite.models.model_format as model_format"]
    if init_from:
        lines.append("import t5x_lite.train_loop as train_loop")
    lines.append("")
    lines += [f"{k} = {v!r}" for k, v in macros.items()]
    if init_from:
        lines += ["# Weights a new run starts from (--gin.INIT_FROM=None for a random init).",
                  f"INIT_FROM = {init_from!r}"]
    if model_dir:
        lines += ["# infer / score / eval read the weights here; no SentencePiece vocabulary "
                  "came with the import.", f"MODEL_DIR = {model_dir!r}", "VOCABULARY = None"]
    lines += ["", f"MODEL = @{gin_module}.{name}()",
              f"{gin_module}.{name}.config = @{gin_module}.{config_cls.__name__}()",
              f"{gin_module}.{config_cls.__name__}:"]
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name == "format":
            value = "@model_format.ModelFormat()"
        elif field.name in by_macro:
            value = f"%{by_macro[field.name]}"
        else:
            value = repr(value)
        lines.append(f"  {field.name} = {value}")
    lines += ["", "# How the model reads its rows: special ids, BOS, prefix attention.",
              "model_format.ModelFormat:"]
    lines += [f"  {k} = {v!r}" for k, v in cfg.format.to_dict().items()]
    if init_from:
        lines += ["", "train_loop.train.init_from = %INIT_FROM"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- export
def load_model(model_dir: str, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """(module, params) of a model directory: an imported one (model_config.json +
    params/) or a training run's (`model` must then be given; the newest checkpoint in
    MODEL_DIR/checkpoints wins over params/). Params are numpy float32 arrays:
    `module.apply({"params": params}, ...)` gives logits."""
    if model is None:
        if not (paths.as_path(model_dir) / MODEL_CONFIG).exists():
            raise FileNotFoundError(f"{model_dir}: no {MODEL_CONFIG} (written by the import); "
                                    "for a training run, pass its model")
        model, _ = read_model_config(model_dir)
    abstract = mapping.abstract_params(model)
    directory = paths.as_path(model_dir)
    restored = checkpoints.restore_train_params(str(directory / TRAIN_CHECKPOINTS),
                                                abstract)
    if restored is not None:
        return model, restored[1]
    params_dir = directory / PARAMS_DIR
    if not params_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no {TRAIN_CHECKPOINTS}/ or {PARAMS_DIR}/ "
                                "checkpoint")
    return model, checkpoints.restore_params(str(params_dir), abstract)


def export_hf(model_dir: str, out_dir: str, *, model: nn.Module | None = None,
              hf_config: Mapping[str, Any] | None = None, dtype: str = "float32") -> str:
    """Writes config.json + model.safetensors for `model_dir` (see `load_model`) into
    `out_dir`, loadable by `transformers.AutoModelForSeq2SeqLM` / `AutoModelForCausalLM` /
    `AutoModelForMaskedLM` (an encoder without an MLM head: `AutoModel`).

    `model` overrides model_config.json (e.g. a training run's gin MODEL); `hf_config`, the
    transformers config the model was imported from (default: model_config.json's), keeps
    the fields we do not model (token ids, model_type 'mt5', ...)."""
    from safetensors.numpy import save_file

    base = hf_config
    if (paths.as_path(model_dir) / MODEL_CONFIG).exists():
        recorded, recorded_base = read_model_config(model_dir)
        model, base = model or recorded, base or recorded_base
    module, params = load_model(model_dir, model)
    family = _family_for_module(module, base)
    hf_config = family.config_to_hf(module.config, base)
    hf_config["dtype"] = dtype
    tensors = family.params_to_hf(params, module, np.dtype(_numpy_dtype(dtype)))
    out = paths.ensure_dir(out_dir)
    paths.atomic_write_text(out / "config.json", json.dumps(hf_config, indent=2, sort_keys=True))
    with paths.atomic_local_file(out / "model.safetensors") as staging:
        save_file(tensors, staging, metadata={"format": "pt"})
    return out_dir


def _numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)

"""How a model reads its data: the one description training, scoring, decoding and export share.

A `ModelFormat` says which architecture reads the batch (its feature layout), the special ids
(pad, eos, unk, bos, and an MLM's mask), how a decoder row starts (a BOS, or T5's shift-right
`decoder_start_id`), and whether a decoder-only model attends bidirectionally over an inputs
prefix (T5's prefix LM) or causally. It lives in the model's config (`DecoderConfig.format`,
`EncoderDecoderConfig.format`, `EncoderConfig.format`), so it is saved with the run's
`config.gin`, with `convert`'s `model_config.json` / `model.gin`, and travels wherever the
model goes. Nothing else decides these facts: ask `of(model)`.

Rows start the way training rows start, everywhere. A decoder row of targets t1..tn is read as
[start, t1, ..., tn-1] and predicts [t1, ..., tn]; `start` is `bos_id` when the model has one
(LLaMA: 1, GPT-2: its <|endoftext|>), else `decoder_start_id` (T5: 0). A decoding prompt and a
scored row begin with the same start id.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from t5x_lite.errors import InputError

ARCHITECTURES = ("decoder", "encoder_decoder", "encoder")
_IDS = ("pad_id", "eos_id", "unk_id", "bos_id", "decoder_start_id", "mask_id")
INPUTS_ATTENTION = ("causal", "bidirectional")


@dataclasses.dataclass(frozen=True)
class ModelFormat:
    """Special ids and reading conventions of one model (a gin configurable field).

    `architecture` is filled in by `of(model)` from the model class; leave it unset in gin.
    `inputs_attention` applies to a decoder-only model's inputs prefix (prefix LM, scoring
    and decoding prompts); an encoder-decoder's encoder always reads bidirectionally.
    `mask_id` is the token a masked-LM objective writes over the positions it hides (BERT's
    [MASK]); only an encoder-only model reads it.
    """

    pad_id: int = 0
    eos_id: int = 1
    unk_id: int | None = 2
    bos_id: int | None = None
    decoder_start_id: int = 0
    inputs_attention: str = "causal"
    architecture: str | None = None
    mask_id: int | None = None

    def __post_init__(self):
        if self.inputs_attention not in INPUTS_ATTENTION:
            raise ValueError(f"inputs_attention must be one of {INPUTS_ATTENTION}, got "
                             f"{self.inputs_attention!r}")
        if self.architecture is not None and self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got "
                             f"{self.architecture!r}")
        for name in _IDS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    @property
    def encoder_decoder(self) -> bool:
        return self.architecture == "encoder_decoder"

    @property
    def encoder_only(self) -> bool:
        """An encoder without a decoder (BERT, RoBERTa): it reads rows, it does not generate."""
        return self.architecture == "encoder"

    @property
    def start_id(self) -> int:
        """The id every decoder row starts with (before its first target)."""
        if self.bos_id is not None and not self.encoder_decoder:
            return self.bos_id
        return self.decoder_start_id

    @property
    def bidirectional_inputs(self) -> bool:
        """Whether a decoder-only model attends both ways over its inputs prefix."""
        return self.architecture == "decoder" and self.inputs_attention == "bidirectional"

    def check_ids(self, vocab_size: int) -> None:
        """Every special id must be a row of the embedding table."""
        for name in _IDS:
            value = getattr(self, name)
            if value is not None and value >= vocab_size:
                raise ValueError(f"format.{name}={value} is not below vocab_size={vocab_size}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "architecture"}

    @classmethod
    def from_dict(cls, values) -> "ModelFormat":
        return cls(**{k: v for k, v in dict(values).items() if k != "architecture"})


def of(model) -> ModelFormat:
    """The model's format with its architecture filled in (from the model class, or the trunk
    a head sits on)."""
    architecture = model.architecture
    fmt = getattr(model.config, "format", None) or ModelFormat()
    if fmt.architecture not in (None, architecture):
        raise ValueError(f"{type(model).__name__} is a {architecture} model, but its format "
                         f"says architecture={fmt.architecture!r}")
    return dataclasses.replace(fmt, architecture=architecture)


def check_vocabulary(fmt: ModelFormat, vocabulary) -> None:
    """The vocabulary that turns text into ids must agree with the model on what EOS (and pad)
    are; a mismatch would train or score every example against the wrong end token."""
    for name in ("eos_id", "pad_id"):
        ours, theirs = getattr(fmt, name), getattr(vocabulary, name, None)
        if theirs is not None and ours != theirs:
            raise ValueError(f"the model's format.{name}={ours} but the vocabulary's {name} is "
                             f"{theirs}: bind the model's format to the vocabulary's ids")


def max_positions(model) -> int | None:
    """How many positions the model can read, when a learned position table bounds it."""
    cfg = model.config
    if getattr(model, "architecture", None) == "encoder":  # always learned, maybe offset
        return cfg.max_length - cfg.position_offset
    return cfg.max_length if getattr(cfg, "position_embedding", None) == "learned" else None


def check_row(model, token_ids, where: str, length: int | None = None) -> None:
    """One-line errors for ids outside the embedding table and rows longer than a learned
    position table: inside XLA either would read out of bounds and give NaNs, not an error."""
    vocab_size = model.config.vocab_size
    ids = np.asarray(token_ids, np.int64).reshape(-1)
    outside = ids[(ids < 0) | (ids >= vocab_size)]
    if outside.size:
        raise InputError(f"{where}: token id {int(outside[0])} is outside the model's "
                         f"vocabulary (vocab_size={vocab_size})")
    limit = max_positions(model)
    length = len(token_ids) if length is None else length
    if limit is not None and length > limit:
        raise InputError(f"{where}: {length} positions exceed the model's learned position "
                         f"table (max_length={limit})")


def check_example(model, inputs, targets, where: str) -> None:
    """`check_row` for a scored example, as the model reads it: a decoder-only model reads
    [start] + inputs + targets minus the last target, as many positions as there are ids; an
    encoder-decoder reads the inputs and [start] + targets minus the last."""
    inputs, targets = list(inputs), list(targets)
    if of(model).encoder_decoder:
        check_row(model, inputs, f"{where} inputs")
        check_row(model, targets, f"{where} targets")
    else:
        check_row(model, inputs + targets, where)


def check_prompt(model, prompt, max_new_tokens: int, where: str) -> None:
    """`check_row` for a decoding request: a decoder-only model reads [start] + prompt and
    then all new tokens but the last; an encoder-decoder's encoder reads the prompt."""
    if of(model).encoder_decoder:
        if not len(prompt):
            raise InputError(f"{where}: an encoder input needs at least one token")
        check_row(model, prompt, where)
    else:
        check_row(model, prompt, where, length=len(prompt) + max_new_tokens)

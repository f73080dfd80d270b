"""From objective outputs to packed model features, per architecture (T5X's feature names).

How a row starts, which ids are special and how a decoder-only model attends over its inputs
come from the model's `ModelFormat` (models/model_format.py); every function here takes it.
Loss weights come from the packer's segment ids (and the prefix mask, or a masked LM's
selection), never from token values,
so a vocabulary whose id 0 is a real token (GPT-2's BPE) trains on it.

Three layouts (`ModelFormat.architecture`):
  decoder          one sequence per example: `inputs` (if any) then `targets`, with a `prefix`
                   mask; loss only on the targets; optionally bidirectional attention over the
                   prefix (T5's prefix-LM architecture) via `decoder_causal_attention`.
  encoder_decoder  `inputs` go to the encoder, `targets` to the decoder (an objective without
                   inputs gets a lone EOS as the encoder input).
  encoder          an encoder-only masked LM (BERT; SeqIO's EncoderFeatureConverter names):
                   aligned `inputs` (corrupted) and `targets` (original) of one length, loss
                   on the positions the objective `selected` (`MaskedLM`), never read off the
                   token values: a selected token may be kept or replaced by a random one.
                   With next-sentence prediction (`sentence_pairs`), also BERT's token types
                   and a next-sentence label where each pair starts (data/next_sentence.py).

`feature_lengths` follow T5X's TASK_FEATURE_LENGTHS: {'targets': L} for a decoder-only LM (a
prefix-LM's inputs and targets share those L positions), {'inputs': Li, 'targets': Lt} for an
encoder-decoder, {'inputs': L} for an encoder (SeqIO's encoder length is its 'inputs' length;
the aligned targets have the same length, so it is not given twice).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from t5x_lite.data import next_sentence as nsp
from t5x_lite.data.objectives import autoregressive_inputs
from t5x_lite.models.model_format import ModelFormat

# The task features each layout's feature_lengths name.
LAYOUTS = {"decoder": {"targets"}, "encoder_decoder": {"inputs", "targets"},
           "encoder": {"inputs"}}
# What an encoder-layout example must hold: aligned token rows and the loss selection.
ENCODER_FEATURES = ("inputs", "targets", "selected")
# The batch features of BERT's next-sentence prediction: a model input and two targets.
TOKEN_TYPES = "encoder_token_types"
NEXT_SENTENCE_TARGETS = ("encoder_next_sentence_labels", "encoder_next_sentence_weights")


def check_layout(layout: str, feature_lengths: Mapping[str, int]) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"feature layout must be one of {tuple(LAYOUTS)}, got {layout!r}")
    needed = LAYOUTS[layout]
    if set(feature_lengths) != needed:
        raise ValueError(f"feature_lengths for a {layout} model must have keys {sorted(needed)}, "
                         f"got {dict(feature_lengths)}")


def packing_lengths(layout: str, feature_lengths: Mapping[str, int], *,
                    sentence_pairs: bool = False) -> dict[str, int]:
    if layout == "encoder":
        names = ENCODER_FEATURES + (nsp.PAIR_FEATURES if sentence_pairs else ())
        return dict.fromkeys(names, feature_lengths["inputs"])
    if layout == "decoder":
        return {"targets": feature_lengths["targets"], "prefix": feature_lengths["targets"]}
    return {"inputs": feature_lengths["inputs"], "targets": feature_lengths["targets"]}


def to_packable(example: Mapping[str, np.ndarray], fmt: ModelFormat,
                feature_lengths: Mapping[str, int]) -> tuple[dict, bool]:
    """One objective output → the features the packer sees; returns (features, truncated)."""
    layout, eos_id = fmt.architecture, fmt.eos_id
    targets = np.asarray(example["targets"], np.int32)
    inputs = example.get("inputs")
    sentence_pairs = nsp.PAIR_FEATURES[0] in example
    if layout == "encoder" or "selected" in example:
        features = _encoder_packable(example, layout)
    elif layout == "decoder":
        inputs = np.zeros(0, np.int32) if inputs is None else np.asarray(inputs, np.int32)
        features = {
            "targets": np.concatenate([inputs, targets]),
            "prefix": np.concatenate([np.ones(len(inputs), np.int32),
                                      np.zeros(len(targets), np.int32)]),
        }
    else:
        if inputs is None or len(inputs) == 0:
            inputs = np.asarray([eos_id], np.int32)
        features = {"inputs": np.asarray(inputs, np.int32), "targets": targets}
    lengths = packing_lengths(layout, feature_lengths, sentence_pairs=sentence_pairs)
    truncated = any(len(v) > lengths[k] for k, v in features.items())
    return {k: v[: lengths[k]] for k, v in features.items()}, truncated


def _encoder_packable(example: Mapping[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """An encoder example's aligned rows; a masked-LM example in another layout, or another
    objective's in this one, is an error (its loss positions would be lost or missing)."""
    names = set(ENCODER_FEATURES)
    if layout != "encoder" or set(example) not in (names, names | set(nsp.PAIR_FEATURES)):
        raise ValueError(f"the encoder layout takes examples with {list(ENCODER_FEATURES)} "
                         f"(the MaskedLM objective) and MaskedLM needs an encoder model; got "
                         f"keys {sorted(example)} for a {layout} model")
    features = {k: np.asarray(v, np.int32) for k, v in example.items()}
    if len({len(v) for v in features.values()}) != 1:
        raise ValueError(f"encoder inputs, targets and selected must be aligned, got lengths "
                         f"{ {k: len(v) for k, v in features.items()} }")
    return features


def decoder_features(packed: Mapping[str, np.ndarray], fmt: ModelFormat) -> dict[str, np.ndarray]:
    targets = packed["targets"].astype(np.int32)
    segment_ids = packed["targets_segment_ids"].astype(np.int32)
    prefix = packed["prefix"].astype(bool)
    features = {
        "decoder_input_tokens": autoregressive_inputs(targets, segment_ids, fmt.start_id),
        "decoder_target_tokens": targets,
        "decoder_segment_ids": segment_ids,
        "decoder_positions": packed["targets_positions"].astype(np.int32),
        "decoder_loss_weights": ((segment_ids > 0) & ~prefix).astype(np.float32),
    }
    if fmt.bidirectional_inputs:
        # Inputs are shifted right by one, so the prefix seen by the model spans one more
        # position (T5X: positions 0..len(inputs) attend bidirectionally).
        shifted = autoregressive_inputs(prefix.astype(np.int32), segment_ids).astype(bool)
        features["decoder_causal_attention"] = prefix | shifted
    return features


def encoder_decoder_features(packed: Mapping[str, np.ndarray],
                             fmt: ModelFormat) -> dict[str, np.ndarray]:
    targets = packed["targets"].astype(np.int32)
    decoder_segment_ids = packed["targets_segment_ids"].astype(np.int32)
    return {
        "encoder_input_tokens": packed["inputs"].astype(np.int32),
        "encoder_segment_ids": packed["inputs_segment_ids"].astype(np.int32),
        "encoder_positions": packed["inputs_positions"].astype(np.int32),
        "decoder_input_tokens": autoregressive_inputs(targets, decoder_segment_ids,
                                                      fmt.start_id),
        "decoder_target_tokens": targets,
        "decoder_segment_ids": decoder_segment_ids,
        "decoder_positions": packed["targets_positions"].astype(np.int32),
        "decoder_loss_weights": (decoder_segment_ids > 0).astype(np.float32),
    }


def encoder_features(packed: Mapping[str, np.ndarray], fmt: ModelFormat) -> dict[str, np.ndarray]:
    """Loss on the selected positions of real segments (padding is never selected, but a
    zeroed padding row must weigh nothing whatever it holds)."""
    del fmt  # the encoder reads its rows as they are: no start id, no shift
    segment_ids = packed["inputs_segment_ids"].astype(np.int32)
    selected = (packed["selected"] > 0) & (segment_ids > 0)
    features = {
        "encoder_input_tokens": packed["inputs"].astype(np.int32),
        "encoder_target_tokens": packed["targets"].astype(np.int32),
        "encoder_segment_ids": segment_ids,
        "encoder_positions": packed["inputs_positions"].astype(np.int32),
        "encoder_loss_weights": selected.astype(np.float32),
    }
    if "next_sentence" in packed:
        labels, weights = nsp.labels_and_weights(packed["next_sentence"] * (segment_ids > 0))
        features[TOKEN_TYPES] = packed["token_types"].astype(np.int32)
        features.update(zip(NEXT_SENTENCE_TARGETS, (labels, weights)))
    return features


def convert(packed, fmt: ModelFormat):
    if fmt.architecture == "decoder":
        return decoder_features(packed, fmt)
    if fmt.architecture == "encoder":
        return encoder_features(packed, fmt)
    return encoder_decoder_features(packed, fmt)


def batch_shapes(fmt: ModelFormat, feature_lengths: Mapping[str, int], batch_size: int, *,
                 sentence_pairs: bool = False) -> dict[str, tuple[tuple[int, int], Any]]:
    """Global shapes and dtypes of a batch (to build the train state abstractly)."""
    layout = fmt.architecture
    check_layout(layout, feature_lengths)
    if layout == "encoder":
        row = (batch_size, feature_lengths["inputs"])
        shapes = {"encoder_input_tokens": (row, np.int32),
                  "encoder_target_tokens": (row, np.int32),
                  "encoder_segment_ids": (row, np.int32), "encoder_positions": (row, np.int32),
                  "encoder_loss_weights": (row, np.float32)}
        if sentence_pairs:
            labels, weights = NEXT_SENTENCE_TARGETS
            shapes.update({TOKEN_TYPES: (row, np.int32), labels: (row, np.int32),
                           weights: (row, np.float32)})
        return shapes
    targets = (batch_size, feature_lengths["targets"])
    shapes = {
        "decoder_input_tokens": (targets, np.int32),
        "decoder_target_tokens": (targets, np.int32),
        "decoder_segment_ids": (targets, np.int32),
        "decoder_positions": (targets, np.int32),
        "decoder_loss_weights": (targets, np.float32),
    }
    if fmt.bidirectional_inputs:
        shapes["decoder_causal_attention"] = (targets, np.bool_)
    if layout == "encoder_decoder":
        inputs = (batch_size, feature_lengths["inputs"])
        shapes.update({
            "encoder_input_tokens": (inputs, np.int32),
            "encoder_segment_ids": (inputs, np.int32),
            "encoder_positions": (inputs, np.int32),
        })
    return shapes

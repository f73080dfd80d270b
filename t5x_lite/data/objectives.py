"""Pretraining objectives: pure functions of (tokens, seed) that return unpacked features.

Every objective takes the token ids of one document (no EOS yet) and an integer seed, and
returns a dict of 1-D int32 arrays: `targets` (and `inputs` for objectives that have them).
The same (tokens, seed) gives the same output on every host, so data loading is reproducible
and resumable. Packing and the shift into model inputs happen later, after packing, because
they depend on where an example lands in a row.
"""
from __future__ import annotations

import numpy as np


def causal_lm(tokens: np.ndarray, seed: int, *, eos_id: int = 1) -> dict[str, np.ndarray]:
    """Next-token prediction: the document followed by EOS is the target sequence."""
    del seed  # deterministic objective; the seed is part of the common signature
    tokens = np.asarray(tokens, np.int32)
    return {"targets": np.concatenate([tokens, np.asarray([eos_id], np.int32)])}


def autoregressive_inputs(targets: np.ndarray, segment_ids: np.ndarray | None) -> np.ndarray:
    """Shifts packed targets right by one within each segment, starting each with 0 (BOS).

    [a b c | d e] with segments [1 1 1 2 2] → [0 a b | 0 d]; works on [..., length] arrays.
    """
    targets = np.asarray(targets)
    shifted = np.zeros_like(targets)
    shifted[..., 1:] = targets[..., :-1]
    if segment_ids is not None:
        starts = np.ones_like(segment_ids, dtype=bool)
        starts[..., 1:] = segment_ids[..., 1:] != segment_ids[..., :-1]
        shifted = np.where(starts, 0, shifted)
    return shifted

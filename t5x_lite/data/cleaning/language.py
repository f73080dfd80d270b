"""Language identification with py3langid, whose model ships inside the wheel (no download).

C4 (Raffel et al. 2020, §2.2) kept pages that langdetect called English with probability at
least 0.99. py3langid (a fork of langid.py) is used here instead: it is deterministic and fast.
Its probabilities (norm_probs=True) are softmax scores scaled by the text's length, so they are
not on langdetect's scale: pick `min_probability` by looking at the scores of real data.
"""

from __future__ import annotations

import functools

from py3langid.langid import MODEL_FILE, LanguageIdentifier


@functools.cache
def _identifier() -> LanguageIdentifier:
    """Loading the model takes about half a second, so it is done once per process.

    Sharing is safe: the identifier is read-only unless `set_languages` is called.
    """
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageId:
    """Classifies texts and keeps those in `keep` with probability >= `min_probability`."""

    def __init__(self, keep: tuple[str, ...] = ("en",), min_probability: float = 0.0):
        if isinstance(keep, str):
            keep = (keep,)
        known = _identifier().labels
        for code in keep:
            if code not in known:
                raise ValueError(f"unknown language code {code!r}; known: {', '.join(known)}")
        if not 0.0 <= min_probability <= 1.0:
            raise ValueError(f"min_probability must be in [0, 1], got {min_probability}")
        self.keep = frozenset(keep)
        self.min_probability = float(min_probability)

    def classify(self, text: str) -> tuple[str, float]:
        """(ISO 639-1 code, normalised probability) of the most likely language."""
        code, probability = _identifier().classify(text)
        return code, float(probability)

    def keeps(self, text: str) -> bool:
        """Whether `text` is in a kept language with enough probability."""
        code, probability = self.classify(text)
        return code in self.keep and probability >= self.min_probability

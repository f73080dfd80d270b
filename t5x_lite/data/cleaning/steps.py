"""The cleaning steps, in order, as functions both drivers (local.py, beam_pipeline.py) call.

A document goes through five stages. Stages 1 and 4 look at one document; 2, 3 and 5 compare
documents, and the drivers implement those as an in-memory pass or as Beam group-bys:

  1. rewrite     normalise (NFC, whitespace) → PII placeholders → line rules (C4's) → bad-word
                 lines (in "lines" mode). A document left empty is removed ("empty").
  2. exact dup   documents with the same text: the one with the smallest id survives.
  3. lines       a line (of at least `min_words` words) found in several documents is kept only
                 in the document ranked first (smallest `rank`) and removed from the others.
                 A document left empty is removed ("repeated_lines").
  4. verdict     language ID → bad words (document mode) → quality rules (C4's and Gopher's):
                 the first that rejects names the removal reason. The text no longer changes.
  5. near dup    MinHash LSH (near_dedup.py): a document is removed when a near-duplicate with
                 a smaller `rank` exists.

Text changes only in stages 1 and 3, both before any verdict, and each rewrite is idempotent,
so cleaning the output again removes nothing more. Every input document ends with exactly one
outcome: kept, or removed with one reason.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
import unicodedata

from t5x_lite.data.cleaning import badwords as badwords_lib
from t5x_lite.data.cleaning import language as language_lib
from t5x_lite.data.cleaning import near_dedup
from t5x_lite.data.cleaning import pii as pii_lib
from t5x_lite.data.cleaning import quality as quality_lib
from t5x_lite.data.cleaning.documents import Document

# Removal reasons besides the quality rules' own names (quality.DOCUMENT_RULES).
UNREADABLE, EMPTY, EXACT_DUPLICATE, REPEATED_LINES = (
    "unreadable", "empty", "exact_duplicate", "repeated_lines")
LANGUAGE, BAD_WORDS, NEAR_DUPLICATE = "language", "bad_words", "near_duplicate"

# Spaces that are not ASCII (no-break, en/em, ideographic ...) and invisible characters.
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INVISIBLE = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")
_BLANK_RUNS = re.compile(r"\n{3,}")


@dataclasses.dataclass(frozen=True)
class LineDedup:
    """Cross-document line dedup, the line-level form of C4's rule (which drops all but one
    occurrence of any three-sentence span). Lines shorter than `min_words` words (headings,
    "Example:", code fragments) are never counted as repeats: ours, not C4's."""

    min_words: int = 5


@dataclasses.dataclass(frozen=True)
class CleaningConfig:
    """Which steps run, each with its options; None switches a step off."""

    normalize: bool = True
    pii: pii_lib.PiiConfig | None = pii_lib.PiiConfig()
    quality: quality_lib.QualityConfig | None = quality_lib.QualityConfig()
    bad_words: badwords_lib.BadWords | None = None
    language: language_lib.LanguageId | None = None
    exact_dedup: bool = True
    line_dedup: LineDedup | None = LineDedup()
    near_dedup: near_dedup.NearDedup | None = near_dedup.NearDedup()


@dataclasses.dataclass
class Outcome:
    """What happened to one input document (kept when `removed_by` is None)."""

    id: str
    text: str
    words_in: int
    removed_by: str | None = None
    duplicate_of: str | None = None  # the surviving document it duplicates
    language: str | None = None
    pii: dict[str, int] = dataclasses.field(default_factory=dict)
    lines_removed: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.removed_by is None


def normalize(text: str) -> str:
    """NFC, Unix newlines, plain spaces, no trailing spaces, at most one blank line in a row.
    Leading indentation is kept (code in documentation means something by it)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", _ODD_SPACES.sub(" ", text))
    return tidy(line.rstrip() for line in text.split("\n"))


def tidy(lines) -> str:
    """Lines joined, with runs of blank lines cut to one and none at either end."""
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip("\n")


def rank(text: str, doc_id: str) -> tuple[str, str]:
    """The order in which duplicates compete: a hash of the text, then the id. It does not
    depend on reading order, so every driver and every rerun chooses the same survivor."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest(), doc_id


def rewrite(document: Document, config: CleaningConfig) -> Outcome:
    """Stage 1."""
    if document.text is None:
        return Outcome(document.id, "", 0, removed_by=UNREADABLE)
    outcome = Outcome(document.id, document.text, len(document.text.split()))
    text = normalize(document.text) if config.normalize else document.text
    if config.pii is not None:
        text, counts = pii_lib.scrub(text, config.pii)
        outcome.pii = {name: count for name, count in counts.items() if count}
    removed = collections.Counter()
    if config.quality is not None:
        text, by_rule = quality_lib.filter_lines(text, config.quality)
        removed.update(by_rule)
    if config.bad_words is not None and config.bad_words.mode == "lines":
        text, count = config.bad_words.filter_lines(text)
        removed[BAD_WORDS] += count
    outcome.lines_removed = {name: count for name, count in removed.items() if count}
    outcome.text = tidy(text.split("\n")) if outcome.lines_removed else text
    if not outcome.text.strip():
        outcome.removed_by = EMPTY
    return outcome


def _line_key(line: str) -> str:
    return hashlib.blake2b(line.strip().encode("utf-8"), digest_size=12).hexdigest()


def line_keys(text: str, config: LineDedup) -> set[str]:
    """Stage 3: the keys of the lines that take part in line dedup."""
    return {_line_key(line) for line in text.split("\n") if len(line.split()) >= config.min_words}


def drop_lines(outcome: Outcome, keys: set[str], config: LineDedup) -> Outcome:
    """Stage 3: removes the lines whose key is in `keys` (repeats kept elsewhere)."""
    if not keys:
        return outcome
    lines = outcome.text.split("\n")
    kept = [line for line in lines
            if len(line.split()) < config.min_words or _line_key(line) not in keys]
    outcome.lines_removed = {**outcome.lines_removed,
                             REPEATED_LINES: len(lines) - len(kept)}
    outcome.text = tidy(kept)
    if not outcome.text.strip():
        outcome.removed_by = REPEATED_LINES
    return outcome


def verdict(outcome: Outcome, config: CleaningConfig) -> Outcome:
    """Stage 4: sets `language` and, if a rule rejects the text, `removed_by`."""
    if config.language is not None:
        outcome.language, probability = config.language.classify(outcome.text)
        if (outcome.language not in config.language.keep
                or probability < config.language.min_probability):
            outcome.removed_by = LANGUAGE
            return outcome
    if (config.bad_words is not None and config.bad_words.mode == "document"
            and config.bad_words.contains(outcome.text)):
        outcome.removed_by = BAD_WORDS
        return outcome
    if config.quality is not None:
        outcome.removed_by = quality_lib.failed_rule(outcome.text, config.quality)
    return outcome


def reasons(config: CleaningConfig) -> tuple[str, ...]:
    """Every removal reason this configuration can give, in the order the stages apply."""
    names = [UNREADABLE, EMPTY]
    names += [EXACT_DUPLICATE] if config.exact_dedup else []
    names += [REPEATED_LINES] if config.line_dedup is not None else []
    names += [LANGUAGE] if config.language is not None else []
    names += [BAD_WORDS] if config.bad_words is not None else []
    names += list(config.quality.document_rules) if config.quality is not None else []
    names += [NEAR_DUPLICATE] if config.near_dedup is not None else []
    return tuple(names)

"""Heuristic quality filters from C4 and Gopher, each a named rule that can be switched off.

Sources:
  [C4]  Raffel et al. 2020, "Exploring the Limits of Transfer Learning ...", §2.2, as
        implemented in tensorflow_datasets/text/c4_utils.py (`clean_page`).
  [Gop] Rae et al. 2021, "Scaling Language Models: ... Gopher", Appendix A.1.1 (quality
        filters) and Table A1 (repetition filters).

Two kinds of rule: *line* rules drop single lines (C4 cleans a page line by line), *document*
rules reject a whole text. To reproduce C4, run `filter_lines` first and `failed_rule` on its
output, as C4 looks for "lorem ipsum", "{" and the sentence count on the kept lines only.

Words are whitespace-split tokens throughout. Deviations from the references, all deliberate:
  * C4 removes Wikipedia citation marks ("[1]", "[edit]") from kept lines; here lines are
    never rewritten, but the verdict is taken on the line with citations removed, as in C4.
  * C4 counts sentences with NLTK's punkt; here a sentence ends at [.!?] followed by space,
    which counts abbreviations ("e.g. x") as ends, so it is slightly more lenient.
  * Gopher does not spell out what counts as a duplicate; here a line, paragraph or n-gram is
    a duplicate when it occurred earlier in the text (the first occurrence is not counted).
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections import Counter
from collections.abc import Callable
from functools import cached_property

# Order matters: a removed line is counted under the first rule rejecting it (C4's order).
LINE_RULES: tuple[str, ...] = (
    "c4_max_word_length", "c4_terminal_punctuation", "c4_min_words_per_line", "c4_javascript",
    "c4_policy",
)
# Document rules run in this order, cheap ones first; `failed_rule` names the first failure.
DOCUMENT_RULES: tuple[str, ...] = (
    "c4_lorem_ipsum", "c4_curly_bracket", "c4_min_sentences",
    "gopher_word_count", "gopher_mean_word_length", "gopher_symbol_ratio",
    "gopher_bullet_lines", "gopher_ellipsis_lines", "gopher_alphabetic_words",
    "gopher_stop_words", "gopher_duplicate_lines", "gopher_duplicate_paragraphs",
    "gopher_duplicate_line_chars", "gopher_duplicate_paragraph_chars", "gopher_top_ngram",
    "gopher_duplicate_ngrams",
)

_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")  # [C4] c4_utils
_END_MARKS = (".", "?", "!", '"')  # [C4] c4_utils _END_MARKS
_ELLIPSES = ("...", "\u2026")
_POLICY_SUBSTRINGS = (  # [C4] c4_utils _POLICY_SUBSTRINGS
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
    "use cookies",
)
_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})  # [Gop] A.1.1
# [Gop] does not list the bullet characters; these are the common ones, markdown's included.
_BULLETS = ("\u2022", "\u25cf", "\u25cb", "\u25e6", "\u25aa", "\u25ab", "\u2023", "\u2043",
            "-", "*", "\u2013")
_SENTENCE_BREAK = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+")
_ALNUM = re.compile(r"[^\W_]")
_LETTER = re.compile(r"[^\W\d_]")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_WORD_EDGE_PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019"


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """Which rules run and their thresholds; the defaults are the published values."""

    line_rules: tuple[str, ...] = LINE_RULES
    document_rules: tuple[str, ...] = DOCUMENT_RULES
    # [C4] c4_utils _MAX_WORD_LENGTH: lines with a longer word are dropped.
    c4_max_word_length: int = 1000
    # [C4] §2.2 / c4_utils _MIN_WORDS_PER_LINE: shorter lines are dropped.
    c4_min_words_per_line: int = 5
    # [C4] c4_utils _MIN_NUM_SENTENCES: pages with fewer sentences are dropped.
    c4_min_sentences: int = 3
    # [Gop] A.1.1: keep documents with 50 to 100,000 words.
    gopher_min_words: int = 50
    gopher_max_words: int = 100_000
    # [Gop] A.1.1: mean word length between 3 and 10 characters.
    gopher_min_mean_word_length: float = 3.0
    gopher_max_mean_word_length: float = 10.0
    # [Gop] A.1.1: symbol-to-word ratio above 0.1, for "#" or for the ellipsis, fails.
    gopher_max_symbol_ratio: float = 0.1
    # [Gop] A.1.1: more than 90% of lines starting with a bullet point fails.
    gopher_max_bullet_line_fraction: float = 0.9
    # [Gop] A.1.1: more than 30% of lines ending with an ellipsis fails.
    gopher_max_ellipsis_line_fraction: float = 0.3
    # [Gop] A.1.1: 80% of words must contain at least one alphabetic character.
    gopher_min_alphabetic_word_fraction: float = 0.8
    # [Gop] A.1.1: at least two of the words the, be, to, of, and, that, have, with
    # (read as two distinct ones; matched case-insensitively, edge punctuation stripped).
    gopher_min_stop_words: int = 2
    # [Gop] Table A1: duplicate line / paragraph fraction 0.30, and fractions of characters
    # in duplicate lines / paragraphs 0.20.
    gopher_max_duplicate_line_fraction: float = 0.30
    gopher_max_duplicate_paragraph_fraction: float = 0.30
    gopher_max_duplicate_line_char_fraction: float = 0.20
    gopher_max_duplicate_paragraph_char_fraction: float = 0.20
    # [Gop] Table A1: (n, max fraction of characters in the most frequent n-gram).
    gopher_top_ngram_max_fractions: tuple[tuple[int, float], ...] = (
        (2, 0.20), (3, 0.18), (4, 0.16))
    # [Gop] Table A1: (n, max fraction of characters in duplicated n-grams).
    gopher_duplicate_ngram_max_fractions: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    def __post_init__(self):
        for field, known in (("line_rules", LINE_RULES), ("document_rules", DOCUMENT_RULES)):
            names = getattr(self, field)
            if isinstance(names, str):
                raise ValueError(f"{field} must be a tuple of rule names, not {names!r}")
            for name in names:
                if name not in known:
                    raise ValueError(f"unknown {field[:-1]} {name!r}; known: {', '.join(known)}")
            object.__setattr__(self, field, tuple(names))


# ---------------------------------------------------------------------------- line rules
# Each takes the stripped line with citations removed; True means the line is dropped.

_LINE_CHECKS: dict[str, Callable[[str, QualityConfig], bool]] = {
    "c4_max_word_length":
        lambda line, c: any(len(w) > c.c4_max_word_length for w in line.split()),
    # [C4] ends in . ? ! or a quote, but not in "..." (nor, here, in the one-character "…").
    "c4_terminal_punctuation":
        lambda line, c: not line.endswith(_END_MARKS) or line.endswith(_ELLIPSES),
    "c4_min_words_per_line": lambda line, c: len(line.split()) < c.c4_min_words_per_line,
    # [C4] drops "JavaScript must be enabled" notices: any line mentioning javascript.
    "c4_javascript": lambda line, c: "javascript" in line.lower(),
    "c4_policy": lambda line, c: any(p in line.lower() for p in _POLICY_SUBSTRINGS),
}


def _enabled_line_checks(config: QualityConfig) -> list[tuple[str, Callable]]:
    enabled = set(config.line_rules)
    return [(name, check) for name, check in _LINE_CHECKS.items() if name in enabled]


def _line_verdict(line: str, checks: list[tuple[str, Callable]], config: QualityConfig):
    core = _CITATION.sub("", line.strip()).strip()
    for name, check in checks:
        if check(core, config):
            return name
    return None


def failed_line_rule(line: str, config: QualityConfig) -> str | None:
    """The first enabled line rule (in LINE_RULES order) rejecting `line`, or None.

    It looks at nothing but the line, so a line's fate never depends on its neighbours.
    """
    return _line_verdict(line, _enabled_line_checks(config), config)


def filter_lines(text: str, config: QualityConfig) -> tuple[str, dict[str, int]]:
    """Drops the lines failing an enabled line rule; returns the text and {rule: lines dropped}.

    Lines are split on "\\n" and the kept ones joined back unchanged, so the result is a
    fixed point: a second pass drops nothing. The empty text has no lines.
    """
    checks = _enabled_line_checks(config)
    counts = {name: 0 for name, _ in checks}
    if not checks or not text:
        return text, counts
    kept = []
    for line in text.split("\n"):
        rule = _line_verdict(line, checks, config)
        if rule is None:
            kept.append(line)
        else:
            counts[rule] += 1
    return "\n".join(kept), counts


# ------------------------------------------------------------------------ document rules

class _Doc:
    """The text's words, lines and paragraphs, each computed once and only if a rule asks."""

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @cached_property
    def word_chars(self) -> int:
        return sum(map(len, self.words))

    @cached_property
    def lines(self) -> list[str]:
        return [s for s in (line.strip() for line in self.text.split("\n")) if s]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [s for s in (p.strip() for p in _PARAGRAPH_BREAK.split(self.text)) if s]

    @cached_property
    def word_ids(self) -> list[int]:
        """Words as small ints, so that n-gram tuples hash fast."""
        ids: dict[str, int] = {}
        return [ids.setdefault(w, len(ids)) for w in self.words]

    @cached_property
    def line_duplicates(self) -> tuple[float, float]:
        return _duplicates(self.lines)

    @cached_property
    def paragraph_duplicates(self) -> tuple[float, float]:
        return _duplicates(self.paragraphs)


def _fraction(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _count_sentences(text: str) -> int:
    """Sentences per line, summed as C4 does; a piece without letters or digits is none."""
    total = 0
    for line in text.split("\n"):
        total += sum(1 for piece in _SENTENCE_BREAK.split(line) if _ALNUM.search(piece))
    return total


def _duplicates(items: list[str]) -> tuple[float, float]:
    """(fraction of items seen earlier in the list, fraction of their characters)."""
    seen: set[str] = set()
    dup_count = dup_chars = 0
    for item in items:
        if item in seen:
            dup_count += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return _fraction(dup_count, len(items)), _fraction(dup_chars, sum(map(len, items)))


def _top_ngram_fraction(doc: _Doc, n: int) -> float:
    """Characters in all copies of the most frequent repeated word n-gram, over word chars."""
    ids = doc.word_ids
    counts = Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
    best = max(counts.values(), default=0)
    if best < 2:  # nothing repeats
        return 0.0
    length = {i: len(w) for i, w in zip(ids, doc.words)}
    chars = max(sum(map(length.__getitem__, g)) for g, c in counts.items() if c == best)
    return _fraction(chars * best, doc.word_chars)


def _duplicate_ngram_fraction(doc: _Doc, n: int) -> float:
    """Characters of words inside a repeat of an earlier n-gram, each word counted once."""
    ids = doc.word_ids
    covered = bytearray(len(ids))
    seen: set[tuple[int, ...]] = set()
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i:i + n])
        if gram in seen:
            covered[i:i + n] = b"\x01" * n
        else:
            seen.add(gram)
    chars = sum(len(w) for w, c in zip(doc.words, covered) if c)
    return _fraction(chars, doc.word_chars)


def _mean_word_length_fails(doc: _Doc, c: QualityConfig) -> bool:
    mean = _fraction(doc.word_chars, len(doc.words))
    return not c.gopher_min_mean_word_length <= mean <= c.gopher_max_mean_word_length


def _symbol_ratio_fails(doc: _Doc, c: QualityConfig) -> bool:
    ellipses = doc.text.count("...") + doc.text.count("\u2026")
    worst = max(doc.text.count("#"), ellipses)
    return _fraction(worst, len(doc.words)) > c.gopher_max_symbol_ratio


def _stop_words_fail(doc: _Doc, c: QualityConfig) -> bool:
    found = {w.strip(_WORD_EDGE_PUNCTUATION).lower() for w in doc.words} & _STOP_WORDS
    return len(found) < c.gopher_min_stop_words


def _ngrams_fail(doc: _Doc, limits, measure) -> bool:
    return any(measure(doc, n) > limit for n, limit in limits)


# Each returns True when the document fails the rule.
_DOCUMENT_CHECKS: dict[str, Callable[[_Doc, QualityConfig], bool]] = {
    "c4_lorem_ipsum": lambda d, c: "lorem ipsum" in d.text.lower(),
    # [C4] "{" marks pages that probably hold code.
    "c4_curly_bracket": lambda d, c: "{" in d.text,
    "c4_min_sentences": lambda d, c: _count_sentences(d.text) < c.c4_min_sentences,
    "gopher_word_count":
        lambda d, c: not c.gopher_min_words <= len(d.words) <= c.gopher_max_words,
    "gopher_mean_word_length": _mean_word_length_fails,
    "gopher_symbol_ratio": _symbol_ratio_fails,
    "gopher_bullet_lines": lambda d, c: _fraction(
        sum(line.startswith(_BULLETS) for line in d.lines), len(d.lines)
    ) > c.gopher_max_bullet_line_fraction,
    "gopher_ellipsis_lines": lambda d, c: _fraction(
        sum(line.endswith(_ELLIPSES) for line in d.lines), len(d.lines)
    ) > c.gopher_max_ellipsis_line_fraction,
    "gopher_alphabetic_words": lambda d, c: _fraction(
        sum(1 for w in d.words if _LETTER.search(w)), len(d.words)
    ) < c.gopher_min_alphabetic_word_fraction,
    "gopher_stop_words": _stop_words_fail,
    "gopher_duplicate_lines":
        lambda d, c: d.line_duplicates[0] > c.gopher_max_duplicate_line_fraction,
    "gopher_duplicate_paragraphs":
        lambda d, c: d.paragraph_duplicates[0] > c.gopher_max_duplicate_paragraph_fraction,
    "gopher_duplicate_line_chars":
        lambda d, c: d.line_duplicates[1] > c.gopher_max_duplicate_line_char_fraction,
    "gopher_duplicate_paragraph_chars": lambda d, c: (
        d.paragraph_duplicates[1] > c.gopher_max_duplicate_paragraph_char_fraction),
    "gopher_top_ngram": lambda d, c: _ngrams_fail(
        d, c.gopher_top_ngram_max_fractions, _top_ngram_fraction),
    "gopher_duplicate_ngrams": lambda d, c: _ngrams_fail(
        d, c.gopher_duplicate_ngram_max_fractions, _duplicate_ngram_fraction),
}
assert tuple(_LINE_CHECKS) == LINE_RULES and tuple(_DOCUMENT_CHECKS) == DOCUMENT_RULES


def failed_rule(text: str, config: QualityConfig) -> str | None:
    """The first enabled document rule (in DOCUMENT_RULES order) that `text` fails, or None."""
    enabled = set(config.document_rules)
    doc = _Doc(text)
    for name, check in _DOCUMENT_CHECKS.items():
        if name in enabled and check(doc, config):
            return name
    return None

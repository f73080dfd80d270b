"""Tests of the per-document cleaning filters: C4/Gopher quality rules, bad words, language."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from t5x_lite.data.cleaning import badwords, language, quality
from t5x_lite.data.cleaning.quality import DOCUMENT_RULES, LINE_RULES, QualityConfig

DEFAULT = QualityConfig()


# ----------------------------------------------------------------------------- builders

def _word(i: int, length: int) -> str:
    """A lowercase word of exactly `length` letters, distinct for distinct i (i < 26**length)."""
    letters = []
    for _ in range(length):
        letters.append(chr(ord("a") + i % 26))
        i //= 26
    return "".join(letters)


def _tokens(n: int, length: int = 5, stops=("the", "of")) -> list[str]:
    """`n` distinct tokens, the stop words first; no n-gram repeats, so Gopher stays quiet."""
    return list(stops) + [_word(i, length) for i in range(n - len(stops))]


def _lines(tokens: list[str], per_line: int = 10) -> list[str]:
    """One sentence per line, `per_line` tokens each, a period on the last one."""
    return [" ".join(tokens[i:i + per_line]) + "." for i in range(0, len(tokens), per_line)]


def _text(n: int = 60, per_line: int = 10, **kwargs) -> str:
    return "\n".join(_lines(_tokens(n, **kwargs), per_line))


def _word_chars(text: str) -> int:
    return sum(len(w) for w in text.split())


# ------------------------------------------------------------------------- config errors

def test_config_rejects_unknown_rule_names():
    with pytest.raises(ValueError, match=r"'c4_nope'.*c4_lorem_ipsum"):
        QualityConfig(document_rules=("c4_lorem_ipsum", "c4_nope"))
    with pytest.raises(ValueError, match=r"'gopher_x'.*c4_policy"):
        QualityConfig(line_rules=("gopher_x",))
    with pytest.raises(ValueError, match="tuple of rule names"):
        QualityConfig(line_rules="c4_policy")


def test_base_text_passes_everything():
    text = _text()
    assert quality.failed_rule(text, DEFAULT) is None
    assert quality.filter_lines(text, DEFAULT)[0] == text


# --------------------------------------------------------------------------- line rules

_GOOD_LINE = "This plain line has enough words."
LINE_CASES = {  # rule: (line that just passes, line that just fails)
    "c4_max_word_length": (f"A word {'x' * 1000} in a line.", f"A word {'x' * 1001} in a line."),
    "c4_terminal_punctuation": ('He said it was "fine"', "He said it was fine..."),
    "c4_min_words_per_line": ("Five words are enough here.", "Four words too few."),
    "c4_javascript": ("Please enable Java in the browser.",
                      "Please enable JavaScript in the browser."),
    "c4_policy": ("Please read our privacy notes first.", "Please read our privacy policy first."),
}


@pytest.mark.parametrize("rule", LINE_RULES)
def test_line_rule_threshold_and_switch(rule):
    passing, failing = LINE_CASES[rule]
    text = "\n".join([_GOOD_LINE, passing, failing, _GOOD_LINE])
    kept, counts = quality.filter_lines(text, DEFAULT)
    assert kept == "\n".join([_GOOD_LINE, passing, _GOOD_LINE])
    assert counts == {name: int(name == rule) for name in LINE_RULES}
    without = QualityConfig(line_rules=tuple(r for r in LINE_RULES if r != rule))
    assert quality.filter_lines(text, without) == (text, {r: 0 for r in without.line_rules})


def test_line_counted_under_first_rejecting_rule_and_citations_ignored():
    # "Too short" fails both terminal punctuation and the word minimum: counted once, first.
    _, counts = quality.filter_lines("Too short", DEFAULT)
    assert counts["c4_terminal_punctuation"] == 1 and sum(counts.values()) == 1
    # C4 strips citation marks before judging, so a trailing "[12]" does not hide the period.
    line = "The river is long and wide.[12] [edit]"
    assert quality.filter_lines(line, DEFAULT)[0] == line


def test_no_line_rules_leaves_text_alone():
    text = "  odd\r\n\nlines {\n"
    assert quality.filter_lines(text, QualityConfig(line_rules=())) == (text, {})


_LINE_PIECES = st.sampled_from([
    "", " ", "The cat sat on the mat.", "Short one.", "ends without a mark",
    "Enable javascript to view this page.", "We use cookies on this site, sorry.",
    "A quote at the end \"here\"", "Trailing dots here and there...", "[1]", "{ code }",
    "x" * 1001 + " and four more words.", "\t Indented line with five words. \r",
])
_LINES = st.lists(st.one_of(_LINE_PIECES, st.text(st.characters(blacklist_characters="\n"),
                                                  max_size=40)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(_LINES)
def test_filter_lines_is_idempotent(lines):
    once, _ = quality.filter_lines("\n".join(lines), DEFAULT)
    twice, counts = quality.filter_lines(once, DEFAULT)
    assert twice == once
    assert set(counts.values()) <= {0}


@settings(max_examples=150, deadline=None)
@given(_LINES, st.data())
def test_line_verdict_depends_on_the_line_only(lines, data):
    def expected(kept_lines):
        return "\n".join(x for x in kept_lines if quality.failed_line_rule(x, DEFAULT) is None)

    text = "\n".join(lines)
    if text:  # the empty text has no lines, not one empty line
        assert quality.filter_lines(text, DEFAULT)[0] == expected(lines)
    subset = [line for line in lines if data.draw(st.booleans())]
    if "\n".join(subset):
        assert quality.filter_lines("\n".join(subset), DEFAULT)[0] == expected(subset)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300))
def test_failed_rule_is_a_pure_function_of_the_text(text, other):
    first = quality.failed_rule(text, DEFAULT)
    quality.failed_rule(other, DEFAULT)
    assert quality.failed_rule("".join(list(text)), QualityConfig()) == first
    if first is not None:
        assert first in DOCUMENT_RULES


# ----------------------------------------------------------------------- document rules
# Each case builder returns (text that just passes, text that just fails). Both are built so
# that every other rule passes, hence turning the rule off lets the failing text through.

def _with_line(extra: str) -> str:
    return _text() + "\n" + extra


def _sentences_case():
    return _text(60, per_line=20), _text(60, per_line=30)  # 3 sentences, then 2


def _mean_length_case(low: bool):
    # 60 tokens: "the", "of" (5 chars) and 58 more, 6 of which end a line with a period.
    n, target = 60, 3 if low else 10
    def build(total):
        rest, extra = divmod(total - 5, n - 2)  # chars of the 58 generated tokens
        lengths = [rest + (i < extra) for i in range(n - 2)]
        tokens = ["the", "of"] + [_word(i, ln) for i, ln in enumerate(lengths)]
        lines = [" ".join(tokens[i:i + 10]) for i in range(0, n, 10)]
        return "\n".join(line[:-1] + "." for line in lines)  # keeps every token's length
    at, beyond = build(target * n), build(target * n + (-1 if low else 1))
    assert _word_chars(at) == target * n and len(at.split()) == n
    return at, beyond


def _marked(count: int, mark: str) -> str:
    tokens = _tokens(60)
    for i in range(count):
        tokens[2 + i] = mark + tokens[2 + i]  # 60 words, so 6 marks is a ratio of exactly 0.1
    return "\n".join(_lines(tokens))


def _bullets(count: int) -> str:
    return "\n".join(("- " if i < count else "") + line
                     for i, line in enumerate(_lines(_tokens(100))))


def _ellipses(count: int) -> str:
    return "\n".join(line[:-1] + "..." if i < count else line
                     for i, line in enumerate(_lines(_tokens(100))))


def _numbers(count: int) -> str:
    tokens = _tokens(100)
    spots = [j for j in range(2, 100) if j % 10 != 9]  # never a line's last word
    for i, j in enumerate(spots[:count]):  # of 100 words, 20 letterless is exactly 0.8
        tokens[j] = str(10_000 + i)
    return "\n".join(_lines(tokens))


def _duplicate_lines(dups: int) -> str:
    # Short repeated lines between long unique ones: many duplicate lines, few characters.
    long_lines = _lines(_tokens(10 * (19 - dups)))
    lines = []
    for i, line in enumerate(long_lines):
        lines.append(line)
        if i <= dups:
            lines.append("yes indeed.")
    assert len(lines) == 20
    return "\n".join(lines)


def _duplicate_paragraphs(dups: int) -> str:
    # Three-line paragraphs plus repeated one-line ones: duplicate lines stay rare.
    long_lines = _lines(_tokens(30 * (19 - dups)))
    paragraphs = []
    for i in range(19 - dups):
        paragraphs.append("\n".join(long_lines[3 * i:3 * i + 3]))
        if i <= dups:
            paragraphs.append("yes indeed.")
    assert len(paragraphs) == 20
    return "\n\n".join(paragraphs)


def _duplicate_line_chars(extra: int) -> str:
    # A long one-word line thrice: 2 of 13 lines are duplicates but many characters are.
    lines = _lines(_tokens(100))
    base = sum(len(line) for line in lines)
    token = "z" * (base // 7 + extra)  # 2L / (base + 3L) crosses 0.2 at L = base / 7
    for at in (9, 5, 1):
        lines.insert(at, token)
    return "\n".join(lines)


def _duplicate_paragraph_chars(extra: int) -> str:
    # Repeated paragraphs whose two short lines are split by indentation: the paragraphs
    # carry many characters, their lines few.
    paragraphs = ["\n".join(pair) for pair in zip(*[iter(_lines(_tokens(100)))] * 2)]
    base = sum(len(p) for p in paragraphs)
    def repeated(pad):
        return "zzz\n" + " " * pad + "yyy"
    pad = next(p for p in range(1000) if 2 * len(repeated(p)) / (base + 3 * len(repeated(p))) > 0.2)
    for at in (5, 3, 1):
        paragraphs.insert(at, repeated(pad - 1 + extra))
    return "\n\n".join(paragraphs)


def _with_inserts(insert: list[str], count: int, per_line: int, n_lines: int = 40) -> str:
    """Lines of unique words; the first `count` lines carry `insert` in their middle."""
    tokens = iter(_tokens(per_line * n_lines))
    lines = []
    for i in range(n_lines):
        words = [next(tokens) for _ in range(per_line)]
        if i < count:
            words[per_line // 2:per_line // 2] = insert
        lines.append(" ".join(words) + ".")
    return "\n".join(lines)


def _around(limit: float, build, covered_chars) -> tuple[str, str]:
    """(build(c), build(c + 1)) for the largest c whose covered fraction is <= limit."""
    c = max(c for c in range(41) if covered_chars(c) / _word_chars(build(c)) <= limit)
    return build(c), build(c + 1)


def _top_bigram_case():
    # "foo bar" c times among unique words: the most frequent 2-gram covers 6c characters.
    return _around(0.20, lambda c: _with_inserts(["foo", "bar"], c, per_line=3),
                   lambda c: 6 * c if c > 1 else 0)


def _repeated_fivegram_case():
    # A five-word span c times among unique words: only 5-grams repeat (not 6- to 10-grams),
    # and the c - 1 later copies cover 10 characters each.
    return _around(0.15, lambda c: _with_inserts(["aa", "bb", "cc", "dd", "ee"], c, per_line=8),
                   lambda c: 10 * max(c - 1, 0))


DOCUMENT_CASES = {
    "c4_lorem_ipsum": lambda: (_with_line("Some lorem and some ipsum are here."),
                               _with_line("Some lorem ipsum text is here.")),
    "c4_curly_bracket": lambda: (_with_line("A closing } bracket is fine."),
                                 _with_line("An opening { bracket is not.")),
    "c4_min_sentences": _sentences_case,
    "gopher_word_count": lambda: (_text(50), _text(49)),
    "gopher_mean_word_length": lambda: _mean_length_case(low=True),
    "gopher_symbol_ratio": lambda: (_marked(6, "#"), _marked(7, "#")),
    "gopher_bullet_lines": lambda: (_bullets(9), _bullets(10)),
    "gopher_ellipsis_lines": lambda: (_ellipses(3), _ellipses(4)),
    "gopher_alphabetic_words": lambda: (_numbers(20), _numbers(21)),
    "gopher_stop_words": lambda: (_text(), _text(stops=("the", "The", "the"))),
    "gopher_duplicate_lines": lambda: (_duplicate_lines(6), _duplicate_lines(7)),
    "gopher_duplicate_paragraphs": lambda: (_duplicate_paragraphs(6), _duplicate_paragraphs(7)),
    "gopher_duplicate_line_chars": lambda: (_duplicate_line_chars(0), _duplicate_line_chars(1)),
    "gopher_duplicate_paragraph_chars":
        lambda: (_duplicate_paragraph_chars(0), _duplicate_paragraph_chars(1)),
    "gopher_top_ngram": _top_bigram_case,
    "gopher_duplicate_ngrams": _repeated_fivegram_case,
}


@pytest.mark.parametrize("rule", DOCUMENT_RULES)
def test_document_rule_threshold_and_switch(rule):
    passing, failing = DOCUMENT_CASES[rule]()
    assert quality.failed_rule(passing, DEFAULT) is None
    assert quality.failed_rule(failing, DEFAULT) == rule
    assert quality.failed_rule(failing, QualityConfig(document_rules=(rule,))) == rule
    without = QualityConfig(document_rules=tuple(r for r in DOCUMENT_RULES if r != rule))
    assert quality.failed_rule(failing, without) is None


def test_upper_thresholds():
    at_ten, above_ten = _mean_length_case(low=False)
    assert quality.failed_rule(at_ten, DEFAULT) is None
    assert quality.failed_rule(above_ten, DEFAULT) == "gopher_mean_word_length"
    assert quality.failed_rule(_marked(7, "..."), DEFAULT) == "gopher_symbol_ratio"
    only_count = QualityConfig(document_rules=("gopher_word_count",))
    assert quality.failed_rule(_text(100_000), only_count) is None
    assert quality.failed_rule(_text(100_001), only_count) == "gopher_word_count"


def test_document_rules_run_in_the_fixed_order():
    text = "lorem ipsum {"  # fails nearly everything
    assert quality.failed_rule(text, DEFAULT) == "c4_lorem_ipsum"
    shuffled = QualityConfig(document_rules=("gopher_stop_words", "c4_curly_bracket"))
    assert quality.failed_rule(text, shuffled) == "c4_curly_bracket"
    assert quality.failed_rule(text, QualityConfig(document_rules=())) is None


# ---------------------------------------------------------------------------- bad words

@pytest.fixture(scope="module")
def english():
    return badwords.BadWords()


def test_badwords_whole_word_and_case_insensitive(english):
    assert {"ass", "cock", "cunt"} <= english.entries  # real entries of the shipped list
    assert english.find("What an ASS. A cock, and a cunt!") == ["ass", "cock", "cunt"]
    assert english.find("In Scunthorpe the class will assess the cockpit.") == []
    assert english.find("big  tits and big\ttits") == ["big tits", "big tits"]
    assert english.find("big titsy") == []


def test_badwords_modes(english):
    """Document mode drops the page at the verdict; lines mode drops lines while rewriting."""
    from t5x_lite.data.cleaning import steps
    from t5x_lite.data.cleaning.documents import Document

    text = "A fine first line.\nYou ass.\nA fine last line."
    assert english.filter_lines(text) == ("A fine first line.\nA fine last line.", 1)
    only = dict(pii=None, quality=None, exact_dedup=False, line_dedup=None, near_dedup=None)
    document = steps.CleaningConfig(bad_words=english, **only)
    outcome = steps.verdict(steps.rewrite(Document("d", text), document), document)
    assert outcome.removed_by == steps.BAD_WORDS
    lines = steps.CleaningConfig(bad_words=badwords.BadWords(mode="lines"), **only)
    outcome = steps.verdict(steps.rewrite(Document("d", text), lines), lines)
    assert outcome.kept and outcome.text == "A fine first line.\nA fine last line."
    assert outcome.lines_removed == {steps.BAD_WORDS: 1}
    outcome = steps.rewrite(Document("e", "You ass."), lines)
    assert outcome.removed_by == steps.EMPTY


def test_badwords_other_languages_and_errors(english):
    assert "english" in badwords.LANGUAGES and "french" in badwords.LANGUAGES
    french = badwords.BadWords(("french",))
    assert french.find("Quel connard, vraiment.") == ["connard"]
    assert english.find("Quel connard, vraiment.") == []
    both = badwords.BadWords(("english", "german"))
    assert both.find("Du Arschloch, you ass.") == ["arschloch", "ass"]
    with pytest.raises(ValueError, match=r"'klingon'.*english"):
        badwords.BadWords(("klingon",))
    with pytest.raises(ValueError, match=r"'pages'.*document"):
        badwords.BadWords(mode="pages")


# ----------------------------------------------------------------------------- language

SENTENCES = {
    "en": "The weather was lovely this morning, so we walked along the river to the market.",
    "fr": "Hier soir, nous avons dîné chez mes grands-parents et ils ont raconté leur voyage.",
    "de": "Gestern Abend haben wir bei meinen Großeltern gegessen, und sie erzählten viel.",
    "es": "Ayer por la noche cenamos en casa de mis abuelos y nos contaron su viaje.",
}


@pytest.mark.parametrize("code", sorted(SENTENCES))
def test_language_classify(code):
    found, probability = language.LanguageId().classify(SENTENCES[code])
    assert found == code and 0.5 < probability <= 1.0


def test_language_keeps():
    english = language.LanguageId()
    assert english.keeps(SENTENCES["en"]) and not english.keeps(SENTENCES["fr"])
    both = language.LanguageId(keep=("fr", "de"))
    assert both.keeps(SENTENCES["fr"]) and both.keeps(SENTENCES["de"])
    assert not both.keeps(SENTENCES["en"])
    _, p = english.classify(SENTENCES["en"])
    assert language.LanguageId(min_probability=p).keeps(SENTENCES["en"])
    assert not language.LanguageId(min_probability=math.nextafter(p, 2)).keeps(SENTENCES["en"])
    with pytest.raises(ValueError, match="'xx'"):
        language.LanguageId(keep=("xx",))
    with pytest.raises(ValueError, match="min_probability"):
        language.LanguageId(min_probability=1.5)

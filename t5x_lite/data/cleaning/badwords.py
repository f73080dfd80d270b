"""Bad-words filter over the per-language word lists shipped with glin-profanity.

C4 (Raffel et al. 2020, §2.2) dropped any page containing a word of the "List of Dirty,
Naughty, Obscene or Otherwise Bad Words" (LDNOOBW), matched as a whole word. The same is done
here with glin-profanity's lists (its English list is LDNOOBW-like), read offline from the
installed package; a "lines" mode drops only the offending lines instead of the page.

Matching is case-insensitive and whole-word: an entry must not be preceded or followed by a
word character, so "class", "assess" or "Scunthorpe" never match "ass" or "cunt". Multi-word
entries match across any run of whitespace. Entries written in scripts without spaces between
words (Chinese, Japanese kana, Thai) cannot have word boundaries and match as substrings.
"""

from __future__ import annotations

import re

from glin_profanity.data.dictionary import DictionaryLoader

_LOADER = DictionaryLoader()
LANGUAGES: tuple[str, ...] = tuple(_LOADER.available_languages)
MODES = ("document", "lines")

# Thai, Japanese kana, CJK ideographs (with extension A) and CJK compatibility ideographs.
_UNSPACED_SCRIPT = re.compile("[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_END = ""  # trie key marking that an entry ends at this node


def _normalise(entry: str) -> str:
    return " ".join(entry.lower().split())


def _trie_pattern(entries: list[str]) -> str:
    """A regex alternation of `entries` factored into a trie, much faster than a flat one."""
    trie: dict = {}
    for entry in entries:
        node = trie
        for char in entry:
            node = node.setdefault(char, {})
        node[_END] = {}
    return _node_pattern(trie)


def _node_pattern(node: dict) -> str:
    branches = [
        (r"\s+" if char == " " else re.escape(char)) + _node_pattern(child)
        for char, child in sorted(node.items()) if char != _END
    ]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if _END in node:  # the entry may stop here; the longer branches are tried first
        return "(?:" + body + ")?"
    return body


def _compile(entries: set[str]) -> re.Pattern:
    """One regex: whole-word alternatives, and substring ones for unspaced scripts."""
    spaced = sorted(e for e in entries if not _UNSPACED_SCRIPT.search(e))
    unspaced = sorted(e for e in entries if _UNSPACED_SCRIPT.search(e))
    parts = []
    if spaced:
        parts.append(r"(?<!\w)" + _trie_pattern(spaced) + r"(?!\w)")
    if unspaced:
        parts.append(_trie_pattern(unspaced))
    return re.compile("|".join(parts) or r"(?!x)x", re.IGNORECASE)


class BadWords:
    """Finds the entries of the chosen languages' lists in a text and drops pages or lines."""

    def __init__(self, languages: tuple[str, ...] = ("english",), mode: str = "document"):
        if isinstance(languages, str):
            languages = (languages,)
        for language in languages:
            if language not in LANGUAGES:
                raise ValueError(f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        if not languages:
            raise ValueError(f"no language given; known: {', '.join(LANGUAGES)}")
        entries = set()
        for language in languages:
            words = _LOADER.get_words(language)
            if not words:  # the loader prints a warning and returns [] when a file is missing
                raise RuntimeError(f"glin-profanity shipped no word list for {language!r}")
            entries.update(n for n in map(_normalise, words) if n)
        self.languages = tuple(languages)
        self.mode = mode
        self.entries = frozenset(entries)
        self._regex = _compile(entries)

    def find(self, text: str) -> list[str]:
        """The entries found in `text`, in order of occurrence (lower-cased list spelling)."""
        return [_normalise(m.group(0)) for m in self._regex.finditer(text)]

    def contains(self, text: str) -> bool:
        """Whether `text` holds any entry; stops at the first."""
        return self._regex.search(text) is not None

    def filter_lines(self, text: str) -> tuple[str, int]:
        """`text` without the lines (split on "\\n") holding an entry, and how many went."""
        lines = text.split("\n")
        kept = [line for line in lines if self._regex.search(line) is None]
        return "\n".join(kept), len(lines) - len(kept)

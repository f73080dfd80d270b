"""The FLAN tasks: registry shape, and every task's TFDS source, preprocessor and templates run
on records with the real builder's feature spec (no download, no TensorFlow).

Records come from `tfds.testing.mock_data` with a data source that serializes random examples
through the builder's own features, so they arrive as a prepared dataset returns them (bytes,
lists, numpy scalars). SuperGLUE's builder needs TensorFlow just to be constructed, so its
datasets are written for real as small array_record datasets under their pinned name and
version, and read back the way a prepared dataset is read without TensorFlow.
"""
from __future__ import annotations

import importlib
import importlib.util
import types
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from t5x_lite.data.tasks import flan_tasks
from t5x_lite.data.tasks import task as task_lib
from t5x_lite.data.tasks.task import correct_options

TASKS = {t.name: t for t in flan_tasks.TASKS}
MOCK_TRAIN, LOCAL_TRAIN, OTHER = 30_500, 260, 7  # records per split in the fake datasets

# Split names each builder defines (read from its `_split_generators` in TFDS 4.9.10).
_TVT = {"train", "validation", "test"}
SPLITS = {
    "glue/mnli": {"train", "validation_matched", "validation_mismatched", "test_matched",
                  "test_mismatched"},
    "imdb_reviews/plain_text": {"train", "test", "unsupervised"},
    "natural_questions_open": {"train", "validation"},
    "squad/v1.1": {"train", "validation"}, "squad/v2.0": {"train", "validation"},
    "bool_q": {"train", "validation"}, "piqa": {"train", "validation"},
    "quac": {"train", "validation"}, "drop": {"train", "dev"},
    "winogrande": {"train_xs", "train_s", "train_m", "train_l", "train_xl", "validation", "test"},
    "story_cloze/2016": {"validation", "test"},
    **{name: {"train", "test"} for name in (
        "yelp_polarity_reviews", "sentiment140", "definite_pronoun_resolution",
        "ag_news_subset", "trec", "math_dataset/algebra__linear_1d")},
}
# Random text has no blank to fill; these fields get a realistic value.
FIXUPS = {
    "winogrande": {"sentence": "The trophy did not fit in the case because _ was too big."},
    "super_glue/record": {"query": "Officials said @placeholder would respond on Monday.",
                          "passage": "A story.\n@highlight\nA highlight"},
}


def _parts(task):
    name, version = task.source.name.split(":")
    return name, version


def _is_local(task) -> bool:
    return task.source.name.startswith("super_glue/")


def _builder(name: str, data_dir: str):
    """The code builder of `name`, constructed without TensorFlow (SuperGLUE's `_info` only
    needs `tf.int32`, which numpy provides)."""
    import tensorflow_datasets.text.super_glue as super_glue

    with mock.patch.object(super_glue, "tf", types.SimpleNamespace(int32=np.int32)):
        return tfds.builder(name, data_dir=data_dir)


def _fake_examples(features, n: int, seed: int):
    """Random examples of `features`; integers below 4 (labels such as HellaSwag's int32 one
    stay in range) and every sequence of length 10."""
    return mocking.RandomFakeGenerator(features, n, max_value=4, seed=seed,
                                       constant_dynamic_shape=True)


class _FakeSplit:
    """`n` random records of `features`, serialized and parsed back like prepared data."""

    def __init__(self, features, n: int, seed: int, fixups: dict):
        self.features, self.n, self.fixups = features, n, fixups
        self.generator = _fake_examples(features, n, seed)

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        if not 0 <= index < self.n:
            raise IndexError(index)
        example = {**self.generator[index], **self.fixups}
        return self.features.deserialize_example_np(self.features.serialize_example(example))


def _split_size(task, split: str, train: int) -> int:
    name, _ = _parts(task)
    assert split in SPLITS.get(name, SPLITS.get(name.split("/")[0], _TVT)), (name, split)
    return train if split == task.source.train_split else OTHER


def _write_local(task, data_dir: str) -> None:
    """Writes the task's dataset as array_record under its pinned name/config/version."""
    name, version = _parts(task)
    dataset, config = name.split("/")
    features = _builder(name, data_dir).info.features
    fixups = FIXUPS.get(name, {})
    splits = {s: _split_size(task, s, LOCAL_TRAIN)
              for s in {task.source.train_split, task.source.test_split}}

    class Local(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = dataset
        VERSION = tfds.core.Version(version)
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config)]

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(n, i) for i, (s, n) in enumerate(splits.items())}

        def _generate_examples(self, n, seed):
            for i, example in enumerate(_fake_examples(features, n, seed)):
                yield i, {**example, **fixups}

    Local(config=config, data_dir=data_dir, file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def local_data_dir(tmp_path_factory):
    tfds.disable_progress_bar()
    directory = str(tmp_path_factory.mktemp("flan_tfds"))
    for task in TASKS.values():
        if _is_local(task):
            _write_local(task, directory)
    return directory


def _records(task, local_data_dir, tmp_path):
    """{split: records} of the task's logical splits, from fake data of its real features."""
    if _is_local(task):
        return {s: task.records(s, local_data_dir) for s in task_lib.SPLITS}, LOCAL_TRAIN

    def as_data_source(builder, split, **unused_kwargs):  # replaces builder.as_data_source
        return _FakeSplit(builder.info.features, _split_size(task, split, MOCK_TRAIN),
                          seed=len(split), fixups=FIXUPS.get(_parts(task)[0], {}))

    if task.source.builder_module:
        importlib.import_module(task.source.builder_module)
    # TfdsSource refuses a dataset that is not prepared; mock_data serves the records.
    name, version = task.source.name.split(":")
    (tmp_path / name / version).mkdir(parents=True, exist_ok=True)
    (tmp_path / name / version / "dataset_info.json").write_text("{}")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=as_data_source):
        return {s: task.records(s, str(tmp_path)) for s in task_lib.SPLITS}, MOCK_TRAIN


def _check_example(task, example):
    assert isinstance(example["answer"], str) and example["answer"].strip()
    for key, value in example.items():
        if key in ("options", "answers"):
            assert value and all(isinstance(v, str) for v in value), (key, value)
        else:
            assert isinstance(value, str), (key, value)
    assert ("options" in example) == task.is_classification
    if task.is_classification:
        assert example["answer"] in example["options"] and correct_options(example)
    if "answers" in example:
        assert example["answer"] == example["answers"][0]


def _check_renders(task, example):
    for index, template in enumerate(task.templates):
        inputs, targets = task.render(example, index)
        assert inputs.strip() and targets.strip(), (task.name, index)
        assert not {"{", "}"} & set(inputs + targets), (task.name, index, inputs)
        if template.has_options:
            bare, _ = task.render(example, index, with_options=False)
            assert "OPTIONS" in inputs and "OPTIONS" not in bare and inputs.startswith(bare)


# --------------------------------------------------------------------------------------- tests
def test_registry_has_flan_tasks_in_flan_clusters():
    assert len(TASKS) == len(flan_tasks.TASKS) >= 24
    clusters = {t.cluster for t in TASKS.values()}
    assert len(clusters) >= 9 and clusters <= set(flan_tasks.CLUSTERS)
    for name, task in TASKS.items():
        assert name == name.lower() and task_lib._TASKS[name] is task
    if importlib.util.find_spec("t5x_lite.data.tasks.embedded_tasks"):
        assert set(TASKS) <= set(task_lib.names())
        assert task_lib.get("rte") is TASKS["rte"]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_definition(name, tmp_path):
    """Pinned TFDS version is the one TFDS builds; metric matches the templates; ~10 templates
    with 0-3 inverse ones; classification inputs end with the options."""
    task = TASKS[name]
    tfds_name, version = _parts(task)
    if task.source.builder_module:
        importlib.import_module(task.source.builder_module)
    assert str(_builder(tfds_name, str(tmp_path)).info.version) == version
    assert (task.metric == "rank_classification") == task.is_classification
    assert 8 <= len(task.templates) <= 12
    assert sum(t.inverse for t in task.templates) <= 3
    assert len({t.inputs for t in task.templates}) == len(task.templates)
    for template in task.templates:
        if task.is_classification and not template.inverse:
            assert template.inputs.endswith("\n\n{options_}")
        elif not task.is_classification:
            assert not template.has_options


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_reads_preprocesses_and_renders(name, local_data_dir, tmp_path):
    task = TASKS[name]
    splits, train_size = _records(task, local_data_dir, tmp_path)
    dev_size = task.source.dev_size
    assert len(splits["dev"]) == dev_size
    assert len(splits["train"]) == min(train_size - dev_size, task.source.max_train)
    assert len(splits["test"]) == OTHER
    records = [records[i] for records, n in zip(splits.values(), (4, 3, 3)) for i in range(n)]
    examples = [e for e in map(task.example, records) if e is not None]
    assert examples, f"{name}: every fake record was skipped"
    for example in examples:
        _check_example(task, example)
        _check_renders(task, example)


def test_rte_golden_render():
    rte = TASKS["rte"]
    example = rte.example({"premise": b"The cat sat on the mat.", "idx": np.int32(3),
                           "hypothesis": b"A cat is on a mat.", "label": np.int64(0)})
    assert example == {"premise": "The cat sat on the mat.", "hypothesis": "A cat is on a mat.",
                       "options": ["yes", "no"], "answer": "yes"}
    assert rte.render(example, 0) == (
        "Premise: The cat sat on the mat.\nHypothesis: A cat is on a mat.\n\n"
        "Does the premise entail the hypothesis?\n\nOPTIONS:\n- yes\n- no", "yes")
    assert rte.render(example, 0, with_options=False)[0].endswith("entail the hypothesis?")
    assert rte.render(example, 8) == (
        "Premise: The cat sat on the mat.\n\nWrite a hypothesis such that the answer to "
        "\"Does the premise entail the hypothesis?\" is \"yes\".", "A cat is on a mat.")
    assert rte.eval_template_indices == list(range(8))


def test_squad_golden_render():
    squad = TASKS["squad_v1"]
    example = squad.example({
        "id": b"5733be", "title": b"Super_Bowl_50",
        "context": b"Super Bowl 50 was played at Levi's Stadium in Santa Clara.",
        "question": b"Where was Super Bowl 50 played?",
        "answers": {"text": [b"Levi's Stadium", b"Levi's Stadium in Santa Clara",
                             b"Levi's Stadium"], "answer_start": np.array([28, 28, 28], np.int32)}})
    assert example["answer"] == "Levi's Stadium"
    assert example["answers"] == ["Levi's Stadium", "Levi's Stadium in Santa Clara"]
    assert squad.render(example, 0) == (
        "Super Bowl 50 was played at Levi's Stadium in Santa Clara.\n\nAnswer the question "
        "using the passage above: Where was Super Bowl 50 played?", "Levi's Stadium")
    assert squad.render(example, 8) == (
        "Super Bowl 50 was played at Levi's Stadium in Santa Clara.\n\nWrite a question about "
        "this passage whose answer is \"Levi's Stadium\".", "Where was Super Bowl 50 played?")


@pytest.mark.parametrize("name, record, expected", [
    ("snli", {"premise": b"p", "hypothesis": b"h", "label": -1}, None),
    ("imdb_reviews", {"text": b"x", "label": -1}, None),
    ("imdb_reviews", {"text": b"Great.<br />Loved it.", "label": 1},
     {"text": "Great.\nLoved it.", "answer": "positive"}),
    ("sentiment140", {"text": b"meh", "polarity": np.int32(2)}, None),
    ("sentiment140", {"text": b"yay", "polarity": np.int32(4)}, {"answer": "positive"}),
    ("cb", {"premise": b"p", "hypothesis": b"h", "label": 1}, {"answer": "no"}),
    ("anli_r1", {"context": b"c", "hypothesis": b"h", "label": 1},
     {"premise": "c", "answer": "it is not possible to tell"}),
    ("stsb", {"sentence1": b"a", "sentence2": b"b", "label": np.float32(3.8)}, {"answer": "4"}),
    ("story_cloze", {"context": b"c", "endings": [b"e1", b"e2"], "label": np.int32(2)},
     {"options": ["e1", "e2"], "answer": "e2"}),
    ("hellaswag", {"context": b"[header] How to x [title] Do y. [step] Then", "activity_label":
                   b"a", "endings": [b"[substeps] z.", b"w."], "label": np.int32(0),
                   "source_id": b"s", "split_type": b"t"},
     {"context": "How to x\nDo y.\nThen", "options": ["z.", "w."], "answer": "z."}),
    ("winogrande", {"sentence": b"The ball broke the table because _ was heavy.",
                    "option1": b"the ball", "option2": b"the table", "label": 0},
     {"context": "The ball broke the table because",
      "options": ["the ball was heavy.", "the table was heavy."], "answer": "the ball was heavy."}),
    ("record", {"passage": b"Text.\n@highlight\nH", "query": b"Then @placeholder won.",
                "entities": [b"Ann", b"Bob"], "answers": [b"Bob"], "idx": {}},
     {"passage": "Text.", "query": "Then", "options": ["Ann won.", "Bob won."],
      "answer": "Bob won."}),
    ("cnn_dailymail", {"article": b"LONDON, England (CNN) -- The story.", "highlights": b"h",
                       "id": b"i", "publisher": b"cnn"}, {"text": "The story."}),
    ("cnn_dailymail", {"article": b"By . A Reporter . PUBLISHED: . 10:00 EST, 2 May 2013 . | . "
                       b"UPDATED: . 11:00 EST, 2 May 2013 . The story.", "highlights": b"h",
                       "id": b"i", "publisher": b"dm"}, {"text": "The story."}),
    ("gigaword", {"document": b"UNK said # things", "summary": b"s"}, None),
    ("squad_v2", {"title": b"t", "context": b"c", "question": b"q", "is_impossible": True,
                  "answers": {"text": [], "answer_start": []}, "id": b"i",
                  "plausible_answers": {"text": [b"x"], "answer_start": [0]}},
     {"answer": "unanswerable"}),
    ("natural_questions", {"question": b"who wrote hamlet", "answer": [b"Shakespeare"]},
     {"question": "who wrote hamlet?", "answer": "Shakespeare"}),
    ("e2e_nlg", {"meaning_representation": b"name[The Eagle], food[French]", "target": b"t",
                 "references": [b"r"], "gem_id": b"g", "gem_parent_id": b"g"},
     {"data": "name = The Eagle, food = French", "answers": ["t", "r"]}),
])
def test_preprocessor_details(name, record, expected):
    """Skipped records, label orders and FLAN's cleaning on hand-written records."""
    example = TASKS[name].example(record)
    if expected is None:
        assert example is None
    else:
        assert example is not None and {k: example.get(k) for k in expected} == expected


def test_an_unprepared_dataset_is_an_error_never_a_download(tmp_path):
    snli = TASKS["snli"]
    with pytest.raises(FileNotFoundError, match="is not prepared in"):
        snli.records("train", str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing was built or fetched

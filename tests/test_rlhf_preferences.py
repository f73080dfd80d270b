"""Preference data: the three JSONL layouts and TFDS read to ranked comparisons, bad records are
skipped and counted with their line, the eval split never shares a prompt with train, encoding
gives fixed shapes with the documented cuts, and batches are sharded and resumable."""

import collections
import json
import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from hypothesis import given, settings
from hypothesis import strategies as st

from t5x_lite.errors import InputError
from t5x_lite.rlhf import preference_arrays, preferences
from t5x_lite.rlhf.preferences import Comparison, PreferenceData

EOS = 1


class CharVocabulary:
    """One id per character (never 0 = pad or 1 = EOS), so lengths are easy to predict."""

    eos_id = EOS

    def encode(self, text):
        return [ord(c) + 2 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 2) for i in ids if i > EOS)


VOCAB = CharVocabulary()


def write_jsonl(path, lines):
    text = (line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text("".join(line + "\n" for line in text))
    return str(path)


def hh(*turns):
    """An HH-RLHF transcript from alternating human / assistant turns."""
    speakers = ("Human", "Assistant")
    return "".join(f"\n\n{speakers[i % 2]}: {turn}" for i, turn in enumerate(turns))


# ------------------------------------------------------------------------------ JSONL layouts


def test_pair_record(tmp_path):
    record = {"prompt": "Q?", "chosen": "good", "rejected": "bad"}
    path = write_jsonl(tmp_path / "p.jsonl", [record])
    comparisons, stats = preferences.read_jsonl(path)
    assert comparisons == [Comparison("Q?", ("good", "bad"))]
    assert stats.read == 1 and not stats.skipped


def test_ranked_record_is_reordered_best_first(tmp_path):
    record = {"prompt": "Q", "responses": ["b", "d", "a", "c"], "ranking": [2, 0, 3, 1]}
    comparisons, _ = preferences.read_jsonl(write_jsonl(tmp_path / "r.jsonl", [record]))
    assert comparisons == [Comparison("Q", ("a", "b", "c", "d"))]


def test_hh_single_turn_splits_at_the_assistant_marker(tmp_path):
    record = {"chosen": hh("Hi there", "Hello! How can I help?"),
              "rejected": hh("Hi there", "Go away.")}
    comparisons, _ = preferences.read_jsonl(write_jsonl(tmp_path / "hh.jsonl", [record]))
    assert comparisons == [Comparison("\n\nHuman: Hi there\n\nAssistant:",
                                      ("Hello! How can I help?", "Go away."))]


def test_hh_multi_turn_prompt_is_every_shared_turn(tmp_path):
    shared = ("What is 2+2?", "4.", "And 3+3?")
    record = {"chosen": hh(*shared, "It is 6."), "rejected": hh(*shared, "It is 7.")}
    (comparison,), _ = preferences.read_jsonl(write_jsonl(tmp_path / "hh.jsonl", [record]))
    assert comparison.prompt == hh(*shared) + "\n\nAssistant:"
    assert comparison.prompt.count("\n\nAssistant:") == 2
    # The common prefix runs into "It is "; the responses still start at the marker.
    assert comparison.responses == ("It is 6.", "It is 7.")


@settings(max_examples=60, deadline=None)
@given(turns=st.lists(st.text("ab ?.", min_size=1, max_size=8), min_size=1, max_size=4),
       responses=st.lists(st.text("abc !", min_size=1, max_size=10), min_size=2, max_size=2,
                          unique=True))
def test_hh_split_recovers_prompt_and_responses(turns, responses):
    turns = turns if len(turns) % 2 else turns[:-1]  # the prompt ends with a human turn
    prompt = hh(*turns) + "\n\nAssistant:"
    chosen, rejected = (prompt + " " + r for r in responses)
    assert preferences.split_transcripts(chosen, rejected) == (prompt, *responses)


def test_layouts_are_detected_per_record(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"prompt": "P1", "chosen": "a", "rejected": "b"},
        {"prompt": "P2", "responses": ["x", "y", "z"], "ranking": [1, 2, 0]},
        {"chosen": hh("P3", "yes"), "rejected": hh("P3", "no")},
    ])
    comparisons, stats = preferences.read_jsonl(path)
    assert [c.responses for c in comparisons] == [("a", "b"), ("y", "z", "x"), ("yes", "no")]
    assert stats.read == 3


def test_file_url_is_read(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b"}])
    assert preferences.read_jsonl("file://" + path)[0] == [Comparison("Q", ("a", "b"))]


# ------------------------------------------------------------------------------ malformed records

GOOD = {"prompt": "Q", "chosen": "a", "rejected": "b"}
MALFORMED = [  # (line, reason it is counted under)
    ("{not json", "bad JSON"),
    ('["a list"]', "not an object"),
    ({"prompt": "Q", "chosen": "a"}, "missing field 'rejected'"),
    ({"prompt": "Q", "chosen": 3, "rejected": "b"}, "field 'chosen' not text"),
    ({"prompt": "Q", "responses": ["a", "b"], "ranking": [0, 0]}, "bad ranking"),
    ({"prompt": "Q", "responses": ["a", "b", "c"], "ranking": [0, 1]}, "bad ranking"),
    ({"prompt": "Q", "responses": ["a", "b"], "ranking": [True, False]}, "bad ranking"),
    ({"prompt": "Q", "responses": ["a"], "ranking": [0]}, "fewer than two responses"),
    ({"prompt": "Q", "responses": ["a", "b"]}, "missing field 'ranking'"),
    ({"prompt": "Q", "chosen": " ", "rejected": "b"}, "empty response"),
    ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "identical responses"),
    ({"chosen": hh("Q", "a"), "rejected": hh("Q", "a")}, "identical responses"),
    ({"chosen": hh("Q", "a"), "rejected": hh("Q", "")}, "empty response"),
    ({"chosen": "\n\nHuman: Q1 a", "rejected": "\n\nHuman: Q2 b"}, "no shared prompt"),
    ({"id": 7}, "unknown layout"),
]


def test_malformed_records_are_skipped_counted_and_logged_with_their_line(tmp_path, caplog):
    lines = [GOOD, ""]  # a blank line is neither a record nor a skip
    for line, _ in MALFORMED:
        lines += [line, GOOD]
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, lines)
    with open(path, "ab") as f:
        f.write(b"\xff\xfe\n")  # line len(lines) + 1
    with caplog.at_level(logging.WARNING, logger=preferences.__name__):
        comparisons, stats = preferences.read_jsonl(str(path))
    assert len(comparisons) == stats.read == len(MALFORMED) + 1
    expected = collections.Counter([reason for _, reason in MALFORMED] + ["not UTF-8"])
    assert stats.skipped == expected
    messages = "\n".join(r.getMessage() for r in caplog.records)
    for index, (_, reason) in enumerate(MALFORMED):
        assert f"{path}:{3 + 2 * index}: skipped ({reason})" in messages
    assert f"{path}:{len(lines) + 1}: skipped (not UTF-8)" in messages
    assert stats.summary().startswith(f"{path}: read {stats.read}, skipped {len(MALFORMED) + 1}")


def test_warnings_stop_after_a_cap_but_counting_does_not(tmp_path, caplog):
    n = preferences.MAX_WARNINGS + 10
    path = write_jsonl(tmp_path / "bad.jsonl", ["{"] * n + [json.dumps(GOOD)])
    with caplog.at_level(logging.WARNING, logger=preferences.__name__):
        _, stats = preferences.read_jsonl(path)
    assert stats.skipped == {"bad JSON": n}
    assert len(caplog.records) == preferences.MAX_WARNINGS + 1  # + "further ... not logged"


def test_a_file_without_usable_records_is_an_input_error(tmp_path):
    path = write_jsonl(tmp_path / "none.jsonl", ["{", {"prompt": "Q", "chosen": "a"}])
    with pytest.raises(InputError) as error:
        preferences.read_jsonl(path)
    message = str(error.value)
    assert "\n" not in message and "none.jsonl" in message
    assert "bad JSON: 1" in message and "missing field 'rejected': 1" in message
    with pytest.raises(InputError, match="empty.jsonl"):
        preferences.read_jsonl(write_jsonl(tmp_path / "empty.jsonl", []))


def test_comparison_needs_two_responses():
    with pytest.raises(ValueError):
        Comparison("Q", ("only",))


def test_read_prompts_skips_and_counts(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "one"}, {"text": "x"}, {"prompt": " "}, "[1]", {"prompt": "two"}])
    prompts, stats = preferences.read_prompts(path)
    assert prompts == ["one", "two"]
    assert stats.skipped == {"missing field 'prompt'": 1, "empty prompt": 1, "not an object": 1}
    assert preferences.read_prompts(path, key="text")[0] == ["x"]
    with pytest.raises(InputError, match="prompts.jsonl"):
        preferences.read_prompts(path, key="nothing")


# ------------------------------------------------------------------------------ PreferenceData


def test_preference_data_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        PreferenceData()
    with pytest.raises(ValueError, match="exactly one"):
        PreferenceData(path="a.jsonl", tfds_name="hh")
    with pytest.raises(ValueError, match="eval_fraction"):
        PreferenceData(path="a.jsonl", eval_fraction=1.0)


def test_preference_data_reads_and_splits_a_file(tmp_path):
    records = [{"prompt": f"Q{i % 50}", "chosen": f"a{i}", "rejected": f"b{i}"}
               for i in range(200)]
    data = PreferenceData(path=write_jsonl(tmp_path / "p.jsonl", records), eval_fraction=0.2)
    assert data.read()[1].read == 200
    train, held_out = data.train_eval()
    assert len(train) + len(held_out) == 200 and held_out
    assert not {c.prompt for c in train} & {c.prompt for c in held_out}
    assert data.train_eval() == (train, held_out)  # deterministic
    train, held_out = PreferenceData(path=data.path, eval_fraction=0.0).train_eval()
    assert len(train) == 200 and held_out == []


@settings(max_examples=50, deadline=None)
@given(prompts=st.lists(st.text(max_size=6), min_size=1, max_size=40),
       fraction=st.floats(0.0, 0.99), seed=st.integers(0, 2 ** 31))
def test_eval_split_never_shares_a_prompt(prompts, fraction, seed):
    comparisons = [Comparison(p, (f"a{i}", f"b{i}")) for i, p in enumerate(prompts)]
    train, held_out = preferences.split_by_prompt(comparisons, fraction, seed)
    assert sorted(map(repr, train + held_out)) == sorted(map(repr, comparisons))
    assert not {c.prompt for c in train} & {c.prompt for c in held_out}
    assert preferences.split_by_prompt(comparisons[::-1], fraction, seed)[1] == held_out[::-1]
    if fraction == 0:
        assert held_out == []


def test_eval_fraction_is_roughly_respected():
    comparisons = [Comparison(f"prompt {i}", ("a", "b")) for i in range(2000)]
    _, held_out = preferences.split_by_prompt(comparisons, 0.1, seed=3)
    assert 140 < len(held_out) < 260
    _, other = preferences.split_by_prompt(comparisons, 0.1, seed=4)
    assert other != held_out  # the seed picks a different eval set


# ------------------------------------------------------------------------------ encoding


def test_encode_shapes_padding_and_eos():
    comparisons = [Comparison("abc", ("xy", "z")), Comparison("d", ("p", "q", "r"))]
    arrays, counts = preference_arrays.encode(comparisons, VOCAB, prompt_length=5, response_length=4,
                                        max_responses=3)
    assert {k: v.shape for k, v in arrays.items()} == {
        "prompt": (2, 5), "prompt_lengths": (2,), "responses": (2, 3, 4),
        "response_lengths": (2, 3), "num_responses": (2,)}
    assert all(v.dtype == np.int32 for v in arrays.values())
    np.testing.assert_array_equal(arrays["prompt"][0], VOCAB.encode("abc") + [0, 0])
    np.testing.assert_array_equal(arrays["responses"][0, 0], VOCAB.encode("xy") + [EOS, 0])
    np.testing.assert_array_equal(arrays["responses"][0, 2], [0, 0, 0, 0])  # absent
    np.testing.assert_array_equal(arrays["prompt_lengths"], [3, 1])
    np.testing.assert_array_equal(arrays["response_lengths"], [[3, 2, 0], [2, 2, 2]])
    np.testing.assert_array_equal(arrays["num_responses"], [2, 3])
    assert not counts


def test_long_prompts_keep_their_last_tokens():
    arrays, counts = preference_arrays.encode([Comparison("abcdefg", ("x", "y"))], VOCAB,
                                        prompt_length=3, response_length=4, max_responses=2)
    assert VOCAB.decode(arrays["prompt"][0]) == "efg"
    assert arrays["prompt_lengths"][0] == 3 and counts == {"prompt truncated": 1}
    encoded = preference_arrays.encode_prompts(["abcdefg", "hi"], VOCAB, prompt_length=3)
    assert [VOCAB.decode(row) for row in encoded["prompt"]] == ["efg", "hi"]
    np.testing.assert_array_equal(encoded["prompt_lengths"], [3, 2])
    with pytest.raises(InputError):
        preference_arrays.encode_prompts([], VOCAB, prompt_length=3)


def test_long_responses_are_dropped_and_counted():
    comparisons = [
        Comparison("p", ("abc", "toolong", "de")),  # keeps "abc", "de" (ranking order kept)
        Comparison("q", ("fits", "waytoolong")),   # one left: dropped
        Comparison("r", ("a", "b", "c", "d")),     # capped at the best three
    ]
    arrays, counts = preference_arrays.encode(comparisons, VOCAB, prompt_length=4, response_length=5,
                                        max_responses=3)
    assert counts == {"response too long": 2, "fewer than two responses": 1,
                      "more than max_responses": 1}
    assert [VOCAB.decode(arrays["prompt"][i]) for i in range(2)] == ["p", "r"]
    assert [VOCAB.decode(r) for r in arrays["responses"][0]] == ["abc", "de", ""]
    assert [VOCAB.decode(r) for r in arrays["responses"][1]] == ["a", "b", "c"]
    # "fits" + EOS is exactly response_length: kept whole.
    fit, _ = preference_arrays.encode([Comparison("q", ("abcd", "e"))], VOCAB, prompt_length=1,
                                response_length=5, max_responses=2)
    assert fit["response_lengths"][0, 0] == 5


def test_nothing_left_after_encoding_is_an_input_error():
    with pytest.raises(InputError, match="response_length=2"):
        preference_arrays.encode([Comparison("p", ("long", "longer"))], VOCAB, prompt_length=4,
                           response_length=2, max_responses=2)


# ------------------------------------------------------------------------------ batches


def rows(n=10):
    return {"id": np.arange(n, dtype=np.int32), "pair": np.arange(2 * n).reshape(n, 2)}


def take(iterator, k):
    return [next(iterator) for _ in range(k)]


def test_batches_are_stacked_rows():
    batch = next(preference_arrays.batches(rows(), batch_size=4, seed=0, shuffle=False))
    np.testing.assert_array_equal(batch["id"], [0, 1, 2, 3])
    np.testing.assert_array_equal(batch["pair"], [[0, 1], [2, 3], [4, 5], [6, 7]])


def test_batches_resume_from_a_saved_state():
    first = preference_arrays.batches(rows(), batch_size=3, seed=5)
    take(first, 4)  # past the first epoch (10 rows)
    state = first.get_state()
    expected = take(first, 6)
    resumed = preference_arrays.batches(rows(), batch_size=3, seed=5)
    resumed.set_state(state)
    for a, b in zip(expected, take(resumed, 6)):
        np.testing.assert_array_equal(a["id"], b["id"])
        np.testing.assert_array_equal(a["pair"], b["pair"])
    json.dumps(state)  # the state is small enough to store with a checkpoint


def test_epochs_are_reshuffled_and_each_covers_every_row():
    ids = np.concatenate([b["id"] for b in take(preference_arrays.batches(rows(), batch_size=5,
                                                                    seed=1), 4)])
    assert sorted(ids[:10]) == sorted(ids[10:]) == list(range(10))
    assert list(ids[:10]) != list(ids[10:])


@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_together_read_what_one_process_reads(shuffle):
    """Each global batch is the same for 1 or 2 processes: shard i holds its i-th block."""
    def read(shard_index, num_shards, repeat=False):
        iterator = preference_arrays.batches(rows(11), batch_size=4, seed=2, shuffle=shuffle,
                                       repeat=repeat, shard_index=shard_index,
                                       num_shards=num_shards)
        batches = take(iterator, 6) if repeat else list(iterator)
        assert all(len(b["id"]) <= 4 // num_shards for b in batches)
        return [[int(i) for i in b["id"]] for b in batches]

    whole, shards = read(0, 1), [read(0, 2), read(1, 2)]
    assert sorted(i for b in whole for i in b) == list(range(11))
    assert [a + b for a, b in zip(*shards)] == whole
    looping = read(0, 1, repeat=True)
    assert [a + b for a, b in zip(read(0, 2, True), read(1, 2, True))] == looping


def test_batch_size_must_divide_among_shards():
    with pytest.raises(ValueError, match="multiple of num_shards"):
        preference_arrays.batches(rows(), batch_size=3, seed=0, num_shards=2)
    with pytest.raises(ValueError, match="shard_index"):
        preference_arrays.batches(rows(), batch_size=4, seed=0, shard_index=2, num_shards=2)


# ------------------------------------------------------------------------------ TFDS


class T5xLiteTestPreferences(tfds.core.GeneratorBasedBuilder):
    """Every layout in one tiny dataset; the last record is malformed (identical responses)."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = epath.Path(__file__)  # as instruction_suite.InstructionSuite

    def _info(self):
        text = tfds.features.Text()
        features = tfds.features.FeaturesDict({
            "prompt": text, "chosen": text, "rejected": text,
            "transcript_chosen": text, "transcript_rejected": text,
            "responses": tfds.features.Sequence(text),
            "ranking": tfds.features.Sequence(tfds.features.Scalar(np.int32))})
        # Records keep their order, so that the malformed one is record 3.
        return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(4):
            chosen, rejected = ("same", "same") if i == 3 else ("yes", "no")
            yield i, {"prompt": f"Q{i}", "chosen": chosen, "rejected": rejected,
                      "transcript_chosen": hh(f"Q{i}", chosen),
                      "transcript_rejected": hh(f"Q{i}", rejected),
                      "responses": ["mid", "worst", "best"], "ranking": [2, 0, 1]}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    tfds.disable_progress_bar()
    T5xLiteTestPreferences(data_dir=directory, file_format="array_record").download_and_prepare()
    return directory


NAME = "t5x_lite_test_preferences"


def test_tfds_transcripts_by_name(tfds_dir, caplog):
    with caplog.at_level(logging.WARNING, logger=preferences.__name__):
        comparisons, stats = preferences.read_tfds(
            NAME, "train", tfds_dir, chosen_key="transcript_chosen",
            rejected_key="transcript_rejected")
    assert comparisons[0] == Comparison("\n\nHuman: Q0\n\nAssistant:", ("yes", "no"))
    assert stats.read == 3 and stats.skipped == {"identical responses": 1}
    assert f"tfds:{NAME}[train] record 3: skipped (identical responses)" in caplog.text


def test_tfds_pairs_and_rankings(tfds_dir):
    pairs, stats = preferences.read_tfds(NAME, "train", tfds_dir, prompt_key="prompt")
    assert pairs[1] == Comparison("Q1", ("yes", "no")) and stats.skipped == {
        "identical responses": 1}
    ranked, _ = preferences.read_tfds(NAME, "train[:2]", tfds_dir, prompt_key="prompt",
                                      responses_key="responses", ranking_key="ranking")
    assert ranked == [Comparison(f"Q{i}", ("best", "mid", "worst")) for i in range(2)]
    data = PreferenceData(tfds_name=NAME, data_dir=tfds_dir, prompt_key="prompt",
                          responses_key="responses", eval_fraction=0.0)
    assert data.read()[0][0].responses == ("mid", "worst", "best")  # no ranking: as stored


def test_tfds_not_prepared_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=NAME):
        preferences.read_tfds(NAME, "train", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no_such_preferences"):
        preferences.read_tfds("no_such_preferences", "train", str(tmp_path))


def test_encode_with_the_real_vocabulary(vocabulary):
    prompt = hh("What is a list?") + "\n\nAssistant:"
    comparison = Comparison(prompt, ("An ordered sequence.", "A dog."))
    arrays, _ = preference_arrays.encode([comparison], vocabulary, prompt_length=32,
                                   response_length=16, max_responses=2)
    assert vocabulary.pad_id in (0, None)
    for k, length in enumerate(arrays["response_lengths"][0]):
        ids = arrays["responses"][0, k, :length]
        assert ids[-1] == vocabulary.eos_id
        assert vocabulary.decode(ids[:-1].tolist()) == comparison.responses[k]

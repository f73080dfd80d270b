"""Instruction tasks: template and options rendering (golden strings), formats and few-shot
exemplars, seqio mixing rates, held-out cluster splits, the mixture pipeline (shares over
20,000 draws, exact resume, targets-only loss weights), and rank classification of task
templates against a slow per-option reference."""
import collections
import functools

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import task_evaluation
from t5x_lite.data import instruction_pipeline as ip
from t5x_lite.data.tasks import formats, mixtures, task as task_lib, templates
from t5x_lite.models import decoder, model_format
from t5x_lite.models import encoder_decoder as ed

NLI = templates.Template('{premise}\n\nDoes it follow that "{hypothesis}"?\n\n{options_}')


class ListSource:
    """An in-memory source: record i of split s is {"n": offset(s) + i}."""

    def __init__(self, train: int, dev: int = 20, test: int = 30):
        self.sizes = {"train": train, "dev": dev, "test": test}

    def describe(self):
        return "memory"

    def records(self, split, data_dir=None):
        offset = {"train": 0, "dev": 100_000, "test": 200_000}[split]
        return [{"n": offset + i} for i in range(self.sizes[split])]


def parity(record):
    if record["n"] % 7 == 3:
        return None  # skipped by the preprocessor, as SNLI's unlabelled pairs are
    return {"number": f"number {record['n']}", "options": ["even", "odd"],
            "answer": ["even", "odd"][record["n"] % 2]}


PARITY_TEMPLATES = (
    templates.Template("Is {number} even or odd?\n\n{options_}"),
    templates.Template("{number}: parity?\n\n{options_}", "It is {answer}."),
    templates.Template("Name an {answer} number.", "{number}", inverse=True),
)


def _register(name, train, cluster="c1"):
    try:
        return task_lib.get(name)
    except KeyError:
        return task_lib.register(task_lib.Task(name, ListSource(train), parity, (cluster,),
                                               "rank_classification", PARITY_TEMPLATES))


@pytest.fixture(scope="module")
def parity_tasks():
    return [_register("test_parity_small", 100, "c1"), _register("test_parity_large", 5000, "c2"),
            _register("test_parity_tiny", 40, "c3")]


# ------------------------------------------------------------------------------ templates
def test_options_rendered_as_flan_does():
    example = {"premise": "It rained.", "hypothesis": "The ground is wet.",
               "options": ["yes", "it is not possible to tell", "no"], "answer": "yes"}
    inputs, targets = NLI.render(example)
    assert inputs == ('It rained.\n\nDoes it follow that "The ground is wet."?\n\nOPTIONS:\n'
                      '- yes\n- it is not possible to tell\n- no')
    assert targets == "yes"
    assert NLI.render(example, with_options=False)[0] == \
        'It rained.\n\nDoes it follow that "The ground is wet."?'
    lettered = templates.OptionsStyle(start="Choose from:", item="\n ", letters=True)
    assert NLI.render(example, options_style=lettered)[0].endswith(
        "Choose from:\n (A) yes\n (B) it is not possible to tell\n (C) no")


def test_missing_field_names_task_template_and_field():
    with pytest.raises(templates.TemplateError, match=r"task 'rte', template 4: .*'hypothesis'"):
        NLI.render({"premise": "p", "options": ["a"], "answer": "a"}, task="rte", index=4)
    with pytest.raises(templates.TemplateError, match="'options_'"):
        NLI.render({"premise": "p", "hypothesis": "h", "answer": "a"}, task="rte", index=0)


def test_inverse_templates_are_not_evaluated(parity_tasks):
    task = parity_tasks[0]
    assert task.eval_template_indices == [0, 1]
    assert task.is_classification and task.input_fields() == ["number"]


# -------------------------------------------------------------------------------- formats
def test_instruction_ablations_drop_the_template(parity_tasks):
    task, example = parity_tasks[0], parity({"n": 5})
    none = formats.Format(instructions="none")
    named = formats.Format(instructions="task_name", with_options=False)
    assert formats.render(task, example, none, 0) == ("number 5\nOPTIONS:\n- even\n- odd", "odd")
    assert formats.render(task, example, named, 1) == ("[test_parity_small] number 5", "odd")


def test_few_shot_layout_is_flan_2022s(parity_tasks):
    task = parity_tasks[0]
    fmt = formats.Format(shots=2)
    exemplars = [parity({"n": 2}), parity({"n": 9})]
    inputs, targets = formats.render(task, parity({"n": 5}), fmt, 1, exemplars)
    assert inputs == ("number 2: parity?\n\nOPTIONS:\n- even\n- odd\n\nIt is even.\n\n\n"
                      "number 9: parity?\n\nOPTIONS:\n- even\n- odd\n\nIt is odd.\n\n\n"
                      "number 5: parity?\n\nOPTIONS:\n- even\n- odd")
    assert targets == "It is odd."


def test_few_shot_budget_prunes_exemplars_and_drops_empty_cases(parity_tasks):
    task = parity_tasks[0]
    exemplars = [parity({"n": n}) for n in (2, 4, 6)]
    query_only = len(formats.render(task, parity({"n": 5}), formats.ZERO_SHOT, 0)[0])
    one = formats.Format(shots=3, max_input_tokens=query_only + 60)
    inputs, _ = formats.render(task, parity({"n": 5}), one, 0, exemplars)
    assert inputs.count("OPTIONS") == 2 and len(inputs) <= one.max_input_tokens
    none_fit = formats.Format(shots=3, max_input_tokens=query_only + 5)
    assert formats.render(task, parity({"n": 5}), none_fit, 0, exemplars) is None


def test_exemplars_are_train_examples_never_the_query(parity_tasks):
    task = parity_tasks[2]
    train = task.records("train")
    for query in range(len(train)):
        rng = np.random.default_rng(query)
        chosen = ip.draw_exemplars(task, train, rng, 5, exclude=query)
        assert len(chosen) == 5
        assert parity(train[query]) not in chosen or parity(train[query]) is None
        assert len({e["number"] for e in chosen}) == 5


# ------------------------------------------------------------------------------- mixtures
@hypothesis.given(n=st.integers(0, 10**6), scale=st.floats(0.01, 10),
                  cap=st.one_of(st.none(), st.floats(1, 10**5)),
                  temperature=st.floats(0.1, 10))
def test_rate_is_seqios_formula(n, scale, cap, temperature):
    rate = mixtures.ExamplesProportional(cap=cap, scale=scale, temperature=temperature)(n)
    expected = n * scale if cap is None else min(n * scale, cap)
    assert rate == pytest.approx(expected ** (1 / temperature), rel=1e-12)


def test_mixture_of_mixtures_weights_by_sub_rate_times_share():
    counts = {"a": 100, "b": 300, "c": 10_000, "d": 50}.__getitem__
    inner = mixtures.Mixture("inner", ("a", "b"), mixtures.ExamplesProportional(cap=None))
    outer = mixtures.Mixture("outer", ((inner, 2.0), "c", ("d", 7.0)),
                             mixtures.ExamplesProportional(cap=3000))
    rates = outer.rates(counts)
    assert rates == pytest.approx({"a": 2.0 * 100 / 400, "b": 2.0 * 300 / 400, "c": 3000.0,
                                   "d": 7.0})
    implicit = mixtures.Mixture("outer2", (inner, "c"), mixtures.ExamplesProportional(cap=300))
    assert implicit.rates(counts)["a"] == pytest.approx(300 * 100 / 400)
    shares = outer.shares(counts)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["c"] == pytest.approx(3000 / (2 + 3000 + 7))


def test_a_task_name_is_the_mixture_of_that_task_alone():
    mixture = mixtures.get("word_valence")
    assert mixture.task_names() == ["word_valence"]
    assert mixture.shares(lambda name: 17) == {"word_valence": 1.0}
    with pytest.raises(KeyError, match="no mixture or task named 'no_such'"):
        mixtures.get("no_such")


def test_held_out_splits_follow_flans_rules():
    table = {"nli": ["rte", "snli"], "paraphrase": ["mrpc", "qqp"], "sentiment": ["sst2", "imdb"],
             "reading_comprehension": ["squad", "boolq"], "commonsense": ["copa", "piqa"],
             "reading_comprehension_with_commonsense": ["record", "cosmos_qa"],
             "closed_book_qa": ["arc", "boolq"]}  # boolq listed twice on purpose
    names = sorted({t for ts in table.values() for t in ts})
    split = lambda c: mixtures.held_out_split(c, names, table)
    train, evaluate = split("nli")
    assert evaluate == ["rte", "snli"] and not {"mrpc", "qqp", "rte", "snli"} & set(train)
    train, _ = split("paraphrase")
    assert not {"rte", "snli"} & set(train) and "sst2" in train
    train, evaluate = split("reading_comprehension")
    assert not {"record", "cosmos_qa", "boolq", "squad"} & set(train)
    assert {"copa", "arc"} <= set(train) and evaluate == ["boolq", "squad"]
    train, _ = split("commonsense")
    assert not {"record", "cosmos_qa", "copa", "piqa"} & set(train) and "squad" in train
    train, _ = split("reading_comprehension_with_commonsense")
    assert not {"squad", "copa", "piqa", "record"} & set(train)
    assert {"arc", "boolq"} <= set(train)  # boolq is closed-book QA too, which is trained on
    train, evaluate = split("closed_book_qa")  # boolq: held out, so never trained on
    assert "boolq" not in train and evaluate == ["arc", "boolq"]
    with pytest.raises(ValueError, match="no tasks"):
        split("summarization")


# ------------------------------------------------------------------------------- pipeline
def _mixture(tasks, cap=3000):
    return mixtures.Mixture("test_mix", tuple(t.name for t in tasks),
                            mixtures.ExamplesProportional(cap=cap))


def test_sampling_frequencies_match_shares(parity_tasks, vocabulary):
    data = ip.InstructionData(_mixture(parity_tasks, cap=2000))
    shares = data.shares()
    iterator = iter(data.examples(vocabulary, vocabulary.eos_id).to_iter_dataset())
    counts = collections.Counter(next(iterator)["task"] for _ in range(20_000))
    for name, share in shares.items():
        assert abs(counts[name] / 20_000 - share) < 0.02, (name, counts, shares)


def test_mixture_iterator_resumes_exactly(parity_tasks, vocabulary):
    data = ip.InstructionData(_mixture(parity_tasks), formats=formats.flan_2022_formats(2))
    kwargs = dict(feature_lengths={"targets": 96}, batch_size=4,
                  model_format=model_format.ModelFormat(architecture="decoder"), seed=3)
    first = iter(data.make_dataset(vocabulary, **kwargs)[0])
    for _ in range(3):
        next(first)
    state = first.get_state()
    expected = [next(first) for _ in range(3)]
    resumed = iter(data.make_dataset(vocabulary, **kwargs)[0])
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("architecture", ["decoder", "encoder_decoder"])
def test_loss_only_on_targets(parity_tasks, vocabulary, architecture):
    data = ip.InstructionData(_mixture(parity_tasks[:1]))
    fmt = model_format.ModelFormat(architecture=architecture)
    lengths = ({"targets": 128} if architecture == "decoder"
               else {"inputs": 64, "targets": 16})
    batch = next(iter(data.make_dataset(vocabulary, feature_lengths=lengths, batch_size=2,
                                        model_format=fmt)[0]))
    for row in range(2):
        weights = batch["decoder_loss_weights"][row] > 0
        segments = batch["decoder_segment_ids"][row]
        for segment in set(segments[segments > 0].tolist()):
            targets = batch["decoder_target_tokens"][row][weights & (segments == segment)]
            text = vocabulary.decode([t for t in targets if t != vocabulary.eos_id])
            assert text in ("even", "odd", "It is even.", "It is odd.") or \
                text.startswith("number ")  # the inverse template's target
            assert targets[-1] == vocabulary.eos_id


def test_fit_keeps_the_end_of_inputs_and_the_start_of_targets():
    fmt = model_format.ModelFormat(architecture="decoder")
    inputs, targets, cut = ip.fit(list(range(10, 30)), [1, 2, 3], fmt, {"targets": 8})
    assert cut and list(inputs) == [25, 26, 27, 28, 29] and list(targets) == [1, 2, 3]
    inputs, targets, cut = ip.fit([5, 6], list(range(10)), fmt, {"targets": 8})
    assert cut and list(inputs) == [5, 6] and list(targets) == list(range(6))
    t5 = model_format.ModelFormat(architecture="encoder_decoder")
    inputs, targets, cut = ip.fit([1, 2, 3, 4], [7, 8, 9], t5, {"inputs": 2, "targets": 2})
    assert cut and list(inputs) == [3, 4] and list(targets) == [7, 8]


# --------------------------------------------------------------------- rank classification
def _tiny(architecture, vocab_size):
    if architecture == "decoder":
        model = decoder.DecoderLM(decoder.DecoderConfig(
            vocab_size=vocab_size, embed_dim=32, num_layers=2, num_heads=4, head_dim=8,
            mlp_dim=64))
        args = (jnp.ones((1, 8), jnp.int32),)
    else:
        model = ed.EncoderDecoder(ed.EncoderDecoderConfig(
            vocab_size=vocab_size, embed_dim=32, num_encoder_layers=1, num_decoder_layers=1,
            num_heads=4, head_dim=8, mlp_dim=64))
        args = (jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
    params = jax.jit(model.init)(jax.random.key(0), *args)["params"]
    return model, nn.unbox(params)


@functools.cache
def _apply(model):
    return jax.jit(lambda params, *rows: model.apply({"params": params}, *rows))


def _slow_log_likelihood(model, params, inputs, option):
    """One unpadded row per option, no batching: the reference."""
    fmt = model_format.of(model)
    if fmt.encoder_decoder:
        decoder_inputs = [fmt.start_id] + option[:-1]
        logits = _apply(model)(params, jnp.asarray([inputs]), jnp.asarray([decoder_inputs]))[0]
    else:
        row = [fmt.start_id] + inputs + option
        logits = _apply(model)(params, jnp.asarray([row[:-1]]))[0][len(inputs):]
    log_probs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
    return float(sum(log_probs[i, t] for i, t in enumerate(option)))


@pytest.mark.parametrize("architecture", ["decoder", "encoder_decoder"])
def test_rank_classification_equals_slow_reference(parity_tasks, vocabulary, architecture):
    model, params = _tiny(architecture, vocabulary.vocab_size)
    task = parity_tasks[0]
    prepared = None  # rank classification does not decode
    result = task_evaluation.evaluate_task(model, params, prepared, task, vocabulary,
                                           batch_size=8, max_examples=3)
    for split in ("dev", "test"):
        cases = task_evaluation.render_cases(task, split, vocabulary, vocabulary.eos_id,
                                             max_examples=3)
        for template in task.eval_template_indices:
            chosen = [c for c in cases if c["template"] == template]
            hits = []
            for case in chosen:
                scores = [_slow_log_likelihood(model, params, case["inputs"], option)
                          for option in case["options"]]
                hits.append(100.0 * (int(np.argmax(scores)) in case["correct"]))
            assert result["templates"][str(template)][split] == pytest.approx(np.mean(hits))
    assert result["examples"] == {"dev": 3, "test": 3}
    assert set(result["templates"]) == {"0", "1"}  # the inverse template is not evaluated
    assert result["chance"] == pytest.approx(50.0)


def test_data_shards_read_disjoint_records(parity_tasks, vocabulary):
    data = ip.InstructionData(_mixture(parity_tasks[2:]), split="test")
    seen = []
    for shard in range(3):
        examples = data.examples(vocabulary, vocabulary.eos_id, shuffle=False, repeat=False,
                                 shard_index=shard, shard_count=3)
        seen.append({(vocabulary.decode(e["inputs"][:-1]), vocabulary.decode(e["targets"][:-1]))
                     for e in examples})
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    # 30 test records (200000..200029); the preprocessor skips n % 7 == 3: 25 remain.
    assert sum(map(len, seen)) == 25


def test_task_scores_do_not_depend_on_the_mesh(parity_tasks, vocabulary):
    from t5x_lite import partitioning

    model, params = _tiny("decoder", vocabulary.vocab_size)
    results = []
    for shape in [None, (8, 1, 1), (2, 2, 2)]:
        mesh = None if shape is None else partitioning.make_mesh(shape)
        results.append(task_evaluation.evaluate_task(
            model, params, None, parity_tasks[0], vocabulary, batch_size=8, max_examples=4,
            mesh=mesh, rules=partitioning.DEFAULT_RULES)["templates"])
    assert results[0] == results[1] == results[2]

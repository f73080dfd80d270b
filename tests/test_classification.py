"""Encoder sequence classification: the task's labels and rows, the loss against a numpy
reference, and `train_classifier` then `eval --tasks` on movie_review_sentiment (a tiny BERT
fits its training rows; eval's accuracy is its predictions' hit rate)."""
import json

import gin
import jax
import numpy as np
import pytest

from t5x_lite import classification, config, task_evaluation
from t5x_lite.data.tasks import task as task_lib
from t5x_lite.errors import InputError
from t5x_lite.interop import convert
from t5x_lite.main import main
from t5x_lite.models import encoder, heads, model_format

TASK = "movie_review_sentiment"
TINY = ["--gin.encoder.EncoderConfig.num_layers=2", "--gin.encoder.EncoderConfig.embed_dim=64",
        "--gin.encoder.EncoderConfig.mlp_dim=128", "--gin.encoder.EncoderConfig.num_heads=2",
        "--gin.encoder.EncoderConfig.head_dim=32"]
HEAD_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.classification as classification
classification.read_head.model = %MODEL"""


def test_labels_and_rows_are_the_rendered_instruction_text(vocabulary):
    task = task_lib.get(TASK)
    labels = classification.task_labels(task)
    assert labels == ("negative", "positive")
    arrays = classification.encode(task, "dev", vocabulary, 1, labels, max_length=96,
                                   max_examples=4)
    cases = task_evaluation.render_cases(task, "dev", vocabulary, 1, max_examples=4,
                                         max_inputs_length=96)
    assert len(arrays["labels"]) == len(cases) == 4 * len(task.eval_template_indices)
    for row, case in enumerate(cases):
        length = int(arrays["encoder_segment_ids"][row].sum())
        assert arrays["encoder_input_tokens"][row, :length].tolist() == case["inputs"]
        assert case["inputs"][-1] == 1  # ends with EOS, as rank classification reads it
        assert arrays["encoder_positions"][row, :length].tolist() == list(range(length))
        answer = task.example(task.records("dev")[case["example"]])["answer"]
        assert labels[arrays["labels"][row]] == answer
    with pytest.raises(InputError, match="no classes"):
        classification.task_labels(task_lib.get("country_capital"))


def test_loss_is_the_mean_cross_entropy_of_real_rows():
    config = encoder.EncoderConfig(vocab_size=64, embed_dim=16, num_layers=1, num_heads=2,
                                   head_dim=8, mlp_dim=32, max_length=16, scan_layers=False,
                                   format=model_format.ModelFormat(pad_id=0, eos_id=1))
    head = heads.ClassifierHead(encoder.EncoderLM(config), num_classes=3, pooling="mean")
    rng = np.random.default_rng(0)
    segment_ids = np.ones((4, 8), np.int32)
    segment_ids[1, 5:] = 0
    segment_ids[3] = 0  # a padding row
    batch = {"encoder_input_tokens": rng.integers(2, 64, (4, 8)).astype(np.int32),
             "encoder_segment_ids": segment_ids,
             "encoder_positions": np.tile(np.arange(8, dtype=np.int32), (4, 1)),
             "labels": np.array([0, 2, 1, 2], np.int32)}
    loss = classification.ClassificationLoss()
    params = head.init(jax.random.key(0), **loss.init_inputs(head, batch))["params"]
    _, sums = loss.sums(head, params, batch, None)
    logits = np.asarray(head.apply({"params": params}, **loss.init_inputs(head, batch)),
                        np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = [0, 1, 2]
    expected = -sum(log_probs[i, batch["labels"][i]] for i in real)
    np.testing.assert_allclose(float(sums["loss"]), expected, rtol=1e-5)
    assert float(sums["examples"]) == 3
    hits = sum(int(np.argmax(logits[i]) == batch["labels"][i]) for i in real)
    assert float(sums["correct"]) == hits
    metrics = loss.normalise(sums)
    np.testing.assert_allclose(float(metrics["loss"]), expected / 3, rtol=1e-5)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, data_dir):
    """A tiny BERT (random init) fine-tuned on 24 training reviews × 8 templates (80 steps)."""
    model_dir = tmp_path_factory.mktemp("classifier") / "run"
    flags = ["--gin_file=models/bert_tiny.gin", "--gin_file=data/python_docs.gin",
             "--gin_file=runs/classifier.gin", f"--gin.DATA_DIR='{data_dir}'",
             f"--gin.MODEL_DIR='{model_dir}'", *TINY]
    argv = ["train_classifier", *flags, "--gin.TRAIN_STEPS=80", "--gin.BATCH_SIZE=16",
            "--gin.MAX_TRAIN_EXAMPLES=24", "--gin.MAX_EVAL_EXAMPLES=8", "--gin.LOG_EVERY=8",
            "--gin.EVAL_EVERY=80", "--gin.CHECKPOINT_EVERY=80", "--gin.LEARNING_RATE=1e-3",
            "--gin.WARMUP_STEPS=3", "--gin.CLASSIFIER_DROPOUT=0.0", "--gin.MAX_LENGTH=96"]
    assert main(argv) == 0
    return model_dir, flags


def test_fine_tuning_fits_the_training_rows(classifier_run):
    model_dir, _ = classifier_run
    with open(model_dir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    train = [r["train/loss"] for r in records if "train/loss" in r]
    assert train[0] > 0.5 and train[-1] < 0.25, train  # from about chance (ln 2) to fitted
    assert any("eval/accuracy" in r for r in records)
    recorded = json.loads((model_dir / classification.HEAD_CONFIG).read_text())
    assert recorded == {"task": TASK, "labels": ["negative", "positive"], "pooling": "mean",
                        "dropout_rate": 0.0}


def test_eval_reports_the_classifiers_accuracy(classifier_run, vocabulary, capsys):
    model_dir, flags = classifier_run
    out = model_dir / "task_eval"
    assert main(["eval", *flags, f"--tasks={TASK}", f"--output_dir={out}",
                 "--gin.task_evaluation.run.max_examples=6"]) == 0
    result = json.loads((out / "results.json").read_text())["tasks"][TASK]
    assert result["metric"] == "accuracy" and result["examples"] == {"dev": 6, "test": 6}
    # Independently: the head's argmax over the same rendered test rows.
    config.GinConfig(["models/bert_tiny.gin"],
                     [HEAD_WIRING, *(flag[len("--gin."):] for flag in TINY)])
    try:
        head = gin.get_configurable(classification.read_head)(model_dir=str(model_dir))
    finally:
        gin.clear_config(clear_constants=True)
    _, params = convert.load_model(str(model_dir), head)
    task = task_lib.get(TASK)
    cases = task_evaluation.render_cases(task, "test", vocabulary, 1, max_examples=6,
                                         max_inputs_length=512)
    picks = np.argmax(classification.predict(head, params, [c["inputs"] for c in cases]), -1)
    template = result["best_dev_template"]
    hits = [int(p) in c["correct"] for p, c in zip(picks, cases) if c["template"] == template]
    assert result["best_dev_template_test"] == pytest.approx(100.0 * np.mean(hits))
    assert "| movie_review_sentiment |" in capsys.readouterr().out


def test_a_classifier_run_refuses_another_task(classifier_run, capsys, tmp_path):
    model_dir, flags = classifier_run
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "a line"}\n')
    assert main(["embed", *flags, f"--input={texts}", f"--output={tmp_path / 'e.npy'}"]) == 2
    assert "holds a fine-tuned classifier" in capsys.readouterr().err
    assert main(["eval", *flags, "--tasks=word_valence"]) == 2
    assert "--tasks=movie_review_sentiment" in capsys.readouterr().err
    assert main(["train_classifier", *flags, "--gin.TASK='word_similarity'",
                 "--gin.TRAIN_STEPS=40", "--gin.MAX_TRAIN_EXAMPLES=4"]) == 2
    assert "use another MODEL_DIR" in capsys.readouterr().err

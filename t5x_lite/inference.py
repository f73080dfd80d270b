"""`infer`, `score` and `eval`: the file-in, file-out jobs the CLI runs on a trained or imported
model (gin supplies the model, vocabulary and settings; MODEL_DIR holds the weights).

Input is JSONL: `{"inputs": text}` for infer, `{"inputs": text, "targets": text}` for score
and for eval's task metrics. A malformed line stops the job with an error naming its line
number. Outputs are written to a temporary file and renamed, so a failed job never leaves a
half-written file behind.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import jax
import numpy as np

from t5x_lite import decoding, evaluation, partitioning, paths
from t5x_lite.data import feature_converters as converters
from t5x_lite.data import pipeline
from t5x_lite.errors import InputError  # the CLI exits with code 2 on it
from t5x_lite.models import model_format


def read_jsonl(path: str, required: Sequence[str]) -> list[dict]:
    """The records of a JSONL file (local, file:// or gs://); each `required` field must be
    text or a list (of token ids, checked where they are used). A file without records is an
    error, as is a malformed line: both name the file (and line)."""
    records = []
    with paths.as_path(path).open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{path}:{number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{number}: expected a JSON object")
            for key in required:
                if not isinstance(record.get(key), (str, list)):
                    raise InputError(f"{path}:{number}: needs a field {key!r} (text or a list "
                                     "of token ids)")
            records.append(record)
    if not records:
        raise InputError(f"{path}: no records (expected one JSON object per line)")
    return records


def write_jsonl_atomically(path: str, records: Iterable[dict]) -> None:
    """Writes `records` to `path` (local, file:// or gs://) so that it appears complete or not
    at all: a failure while writing leaves an existing file as it was (paths.atomic_output)."""
    with paths.atomic_output(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def load(model, model_dir: str):
    """Params of `model` from MODEL_DIR: the newest training checkpoint, else an import."""
    from t5x_lite import classification  # imports this module: imported late
    from t5x_lite.interop import convert  # the loader knows both layouts
    from t5x_lite.models import heads

    marker = paths.as_path(model_dir) / classification.HEAD_CONFIG
    if not isinstance(model, heads.ClassifierHead) and marker.exists():
        raise InputError(f"{model_dir} holds a fine-tuned classifier, not a language model: "
                         "evaluate it with `t5x-lite eval --tasks=TASK` (its task is in "
                         f"{marker})")

    _, params = convert.load_model(model_dir, model)
    return params


def job_mesh(mesh_shape):
    """The mesh the job runs on: MESH_SHAPE if given; by default one device in a single
    process (decoding a handful of rows gains nothing from splitting them) and every device,
    data-parallel, when the job spans processes (each must hold a part of the mesh)."""
    if mesh_shape is None and jax.process_count() == 1:
        return partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    return partitioning.make_mesh((-1, 1, 1) if mesh_shape is None else mesh_shape)


def _token_ids(record: dict, key: str, vocabulary, where: str) -> list[int]:
    """A field as token ids: a list of ints is taken as it is (pre-tokenized input, e.g. for a
    model imported without a SentencePiece vocabulary); text needs the vocabulary."""
    value = record[key]
    if isinstance(value, list):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            raise InputError(f"{where}: {key!r} must be text or a list of token ids")
        return list(value)
    if vocabulary is None:
        raise InputError(f"{where}: {key!r} is text but no VOCABULARY is bound (give token ids, "
                         "or a vocabulary, e.g. --gin_file=data/python_docs.gin)")
    return vocabulary.encode(value)


def _decode_text(vocabulary, tokens: list[int]) -> str | None:
    return None if vocabulary is None else vocabulary.decode(tokens)


def infer(*, model, vocabulary, model_dir: str, input_path: str, output_path: str | None,
          strategy: decoding.Strategy = decoding.Strategy(), max_new_tokens: int = 64,
          batch_size: int = 8, seed: int = 0, mesh_shape=None,
          logical_axis_rules=partitioning.DEFAULT_RULES, params=None,
          quantize: str | None = None) -> list[dict]:
    """Generates for every `inputs` line (text, or token ids); writes {inputs, outputs: [text],
    tokens, scores} to `output_path` (if given) and returns the same records. Prompts are read
    as the model's format says (start id, EOS, prefix attention; models/model_format.py).
    `quantize='int8'` decodes with int8 weights (models/quantization.py)."""
    fmt = model_format.of(model)
    records = read_jsonl(input_path, ["inputs"])
    prompts = [_token_ids(r, "inputs", vocabulary, f"{input_path} record {i + 1}")
               for i, r in enumerate(records)]
    if fmt.encoder_decoder:  # encoder inputs end with EOS, as span corruption's do
        prompts = [p + [fmt.eos_id] for p in prompts]
    for index, prompt in enumerate(prompts):
        model_format.check_prompt(model, prompt, max_new_tokens,
                                  f"{input_path} record {index + 1}")
    # Into decoding's layout once, not per batch (the trained layout is not kept).
    params = decoding.prepare_params(model, load(model, model_dir) if params is None else params,
                                     quantize)
    mesh = job_mesh(mesh_shape)
    results = []
    for start in range(0, len(records), batch_size):
        chunk, rows = records[start : start + batch_size], prompts[start : start + batch_size]
        seeds = [int(r.get("seed", seed + start + i)) for i, r in enumerate(chunk)]
        out = decoding.decode(model, params, None if fmt.encoder_decoder else rows,
                              encoder_inputs=rows if fmt.encoder_decoder else None,
                              strategy=strategy, max_new_tokens=max_new_tokens, seeds=seeds,
                              mesh=mesh, logical_axis_rules=logical_axis_rules)
        for record, tokens, scores in zip(chunk, out["tokens"], out["scores"]):
            token_lists = [_until_eos(t, fmt.eos_id) for t in tokens]
            results.append({
                "inputs": record["inputs"],
                "outputs": [_decode_text(vocabulary, t) for t in token_lists],
                "tokens": token_lists,
                "scores": [float(s) for s in scores],
            })
    if output_path and jax.process_index() == 0:  # every process computed the same results
        write_jsonl_atomically(output_path, results)
    return results


def _until_eos(tokens: np.ndarray, eos_id: int) -> list[int]:
    tokens = [int(t) for t in tokens]
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


def score(*, model, vocabulary, model_dir: str, input_path: str, output_path: str,
          batch_size: int = 8, mesh_shape=None,
          logical_axis_rules=partitioning.DEFAULT_RULES, params=None) -> list[dict]:
    """Log-likelihood of each line's `targets` (EOS appended) given its `inputs`; each field is
    text or token ids. Rows are read as training read them (evaluation.score)."""
    fmt = model_format.of(model)
    records = read_jsonl(input_path, ["inputs", "targets"])
    examples = []
    for index, record in enumerate(records):
        where = f"{input_path} record {index + 1}"
        examples.append({"inputs": _token_ids(record, "inputs", vocabulary, where),
                         "targets": _token_ids(record, "targets", vocabulary, where)
                         + [fmt.eos_id]})
        model_format.check_example(model, examples[-1]["inputs"], examples[-1]["targets"],
                                   where)
    params = load(model, model_dir) if params is None else params
    scores = _score_examples(model, params, examples, batch_size, mesh_shape, logical_axis_rules)
    results = [dict(r, **s) for r, s in zip(records, scores)]
    if jax.process_index() == 0:  # every process computed the same scores
        write_jsonl_atomically(output_path, results)
    return results


def _score_examples(model, params, examples, batch_size, mesh_shape, rules):
    longest_inputs = max(max(len(e["inputs"]) for e in examples), 1)
    longest_targets = max(len(e["targets"]) for e in examples)
    mesh = job_mesh(mesh_shape)
    divisor = partitioning.batch_divisor(mesh, rules)
    return evaluation.score(model, params, examples,
                            batch_size=-(-batch_size // divisor) * divisor,
                            inputs_length=longest_inputs, targets_length=longest_targets,
                            mesh=mesh, rules=rules)


def evaluate(*, model, vocabulary, model_dir: str, eval_data: pipeline.DatasetConfig | None,
             feature_lengths, objective, batch_size: int = 8, eval_batches: int = 16,
             input_path: str | None = None, output_path: str | None = None,
             max_new_tokens: int = 64, seed: int = 0, mesh_shape=None,
             logical_axis_rules=partitioning.DEFAULT_RULES,
             data_shards: int | None = None) -> dict[str, Any]:
    """Loss, perplexity and token accuracy on a split (read in `data_shards` pieces, as
    training reads it); with an input file, also exact match, BLEU and ROUGE of greedy
    predictions against its `targets`."""
    from t5x_lite import optimizers, train_loop
    from t5x_lite.trainer import Trainer

    params = load(model, model_dir)
    results: dict[str, Any] = {}
    if eval_data is not None:
        mesh = job_mesh(mesh_shape)
        fmt = model_format.of(model)
        schedule = optimizers.constant(0.0)
        trainer = Trainer(model, optimizers.adamw(schedule), schedule, mesh, logical_axis_rules,
                          batch_shapes=converters.batch_shapes(fmt, feature_lengths,
                                                               batch_size))
        pieces, num_pieces = partitioning.batch_pieces(mesh, trainer.rules, data_shards)
        dataset, _ = pipeline.make_sharded_dataset(
            eval_data, vocabulary, pieces=pieces, num_pieces=num_pieces,
            feature_lengths=feature_lengths, batch_size=batch_size, objective=objective,
            model_format=fmt, seed=seed, shuffle=False, repeat=False, num_batches=eval_batches)
        placed = partitioning.put_global(params, trainer.state_shardings.params)
        results.update({f"{eval_data.split}/{k}": v for k, v in
                        train_loop.evaluate(trainer, placed, dataset).items()})
    if input_path:
        records = read_jsonl(input_path, ["inputs", "targets"])
        predictions = infer(model=model, vocabulary=vocabulary, model_dir=model_dir,
                            input_path=input_path, output_path=output_path,
                            max_new_tokens=max_new_tokens, batch_size=batch_size,
                            mesh_shape=mesh_shape, logical_axis_rules=logical_axis_rules,
                            params=params)
        texts = [p["outputs"][0] for p in predictions]
        references = [r["targets"] for r in records]
        results.update(evaluation.exact_match(texts, references))
        results.update(evaluation.bleu(texts, references))
        results.update(evaluation.rouge(texts, references))
    return results

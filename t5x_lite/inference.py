"""`infer`, `score` and `eval`: the file-in, file-out jobs the CLI runs on a trained or imported
model (gin supplies the model, vocabulary and settings; MODEL_DIR holds the weights).

Input is JSONL: `{"inputs": text}` for infer, `{"inputs": text, "targets": text}` for score
and for eval's task metrics. A malformed line stops the job with an error naming its line
number. Outputs are written to a temporary file and renamed, so a failed job never leaves a
half-written file behind.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import jax
import numpy as np

from t5x_lite import decoding, evaluation, partitioning
from t5x_lite.data import feature_converters as converters
from t5x_lite.data import pipeline


class InputError(ValueError):
    """A bad input file; the message names the file and line."""


def read_jsonl(path: str, required: Sequence[str]) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{number}: expected a JSON object")
            for key in required:
                if not isinstance(record.get(key), str):
                    raise InputError(f"{path}:{number}: needs a string field {key!r}")
            records.append(record)
    return records


def write_jsonl_atomically(path: str, records: Iterable[dict]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(model, model_dir: str):
    """Params of `model` from MODEL_DIR: the newest training checkpoint, else an import."""
    from t5x_lite.interop import convert  # the loader knows both layouts

    _, params = convert.load_model(model_dir, model)
    return params


def _encode_inputs(vocabulary, model, texts: Sequence[str]) -> tuple[list, list]:
    ids = [vocabulary.encode(t) for t in texts]
    if getattr(model, "feature_converter", "decoder") == "encoder_decoder":
        return None, [i + [vocabulary.eos_id] for i in ids]
    return ids, None


def infer(*, model, vocabulary, model_dir: str, input_path: str, output_path: str | None,
          strategy: decoding.Strategy = decoding.Strategy(), max_new_tokens: int = 64,
          batch_size: int = 8, seed: int = 0, mesh_shape=(1, 1, 1),
          logical_axis_rules=partitioning.DEFAULT_RULES, params=None) -> list[dict]:
    """Generates for every `inputs` line; writes {inputs, outputs: [text], tokens, scores}
    to `output_path` (if given) and returns the same records."""
    records = read_jsonl(input_path, ["inputs"])
    # Into decoding's layout once, not per batch (the trained layout is not kept).
    params = decoding.prepare_params(model, load(model, model_dir) if params is None else params)
    mesh = partitioning.make_mesh(mesh_shape)
    results = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        prompts, encoder_inputs = _encode_inputs(vocabulary, model,
                                                 [r["inputs"] for r in chunk])
        seeds = [int(r.get("seed", seed + start + i)) for i, r in enumerate(chunk)]
        out = decoding.decode(model, params, prompts, encoder_inputs=encoder_inputs,
                              strategy=strategy, max_new_tokens=max_new_tokens,
                              eos_id=vocabulary.eos_id, seeds=seeds, mesh=mesh,
                              logical_axis_rules=logical_axis_rules)
        for record, tokens, scores in zip(chunk, out["tokens"], out["scores"]):
            token_lists = [_until_eos(t, vocabulary.eos_id) for t in tokens]
            results.append({
                "inputs": record["inputs"],
                "outputs": [vocabulary.decode(t) for t in token_lists],
                "tokens": token_lists,
                "scores": [float(s) for s in scores],
            })
    if output_path:
        write_jsonl_atomically(output_path, results)
    return results


def _until_eos(tokens: np.ndarray, eos_id: int) -> list[int]:
    tokens = [int(t) for t in tokens]
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


def score(*, model, vocabulary, model_dir: str, input_path: str, output_path: str,
          batch_size: int = 8, mesh_shape=(1, 1, 1),
          logical_axis_rules=partitioning.DEFAULT_RULES, params=None) -> list[dict]:
    """Log-likelihood of each line's `targets` (EOS appended) given its `inputs`."""
    records = read_jsonl(input_path, ["inputs", "targets"])
    params = load(model, model_dir) if params is None else params
    examples = [{"inputs": vocabulary.encode(r["inputs"]),
                 "targets": vocabulary.encode(r["targets"]) + [vocabulary.eos_id]}
                for r in records]
    scores = _score_examples(model, params, examples, batch_size, mesh_shape, logical_axis_rules)
    results = [dict(r, **s) for r, s in zip(records, scores)]
    write_jsonl_atomically(output_path, results)
    return results


def _score_examples(model, params, examples, batch_size, mesh_shape, rules):
    layout = getattr(model, "feature_converter", "decoder")
    longest_inputs = max(max(len(e["inputs"]) for e in examples), 1)
    longest_targets = max(len(e["targets"]) for e in examples)
    mesh = partitioning.make_mesh(mesh_shape)
    divisor = partitioning.batch_divisor(mesh, rules)
    return evaluation.score(model, params, examples, layout=layout,
                            batch_size=-(-batch_size // divisor) * divisor,
                            inputs_length=longest_inputs, targets_length=longest_targets,
                            mesh=mesh, rules=rules)


def evaluate(*, model, vocabulary, model_dir: str, eval_data: pipeline.DatasetConfig | None,
             feature_lengths, objective, batch_size: int = 8, eval_batches: int = 16,
             input_path: str | None = None, output_path: str | None = None,
             max_new_tokens: int = 64, seed: int = 0, mesh_shape=(1, 1, 1),
             logical_axis_rules=partitioning.DEFAULT_RULES) -> dict[str, Any]:
    """Loss, perplexity and token accuracy on a split; with an input file, also exact match,
    BLEU and ROUGE of greedy predictions against its `targets`."""
    from t5x_lite import optimizers, train_loop
    from t5x_lite.trainer import Trainer

    params = load(model, model_dir)
    results: dict[str, Any] = {}
    if eval_data is not None:
        mesh = partitioning.make_mesh(mesh_shape)
        layout = getattr(model, "feature_converter", "decoder")
        schedule = optimizers.constant(0.0)
        trainer = Trainer(model, optimizers.adamw(schedule), schedule, mesh, logical_axis_rules,
                          batch_shapes=converters.batch_shapes(layout, feature_lengths,
                                                               batch_size))
        dataset, _ = pipeline.make_dataset(
            eval_data, vocabulary, feature_lengths=feature_lengths, batch_size=batch_size,
            objective=objective, layout=layout, seed=seed, shuffle=False, repeat=False)
        placed = jax.device_put(params, trainer.state_shardings.params)
        results.update({f"{eval_data.split}/{k}": v for k, v in
                        train_loop.evaluate(trainer, placed, dataset, eval_batches).items()})
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

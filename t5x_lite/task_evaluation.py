"""Evaluating instruction tasks: every task, every evaluation template, dev and test split.

What FLAN reports (Wei et al. 2021, §3; FLAN_NOTES.md): per task, the test score of the
template that scored best on dev, the mean over templates and their spread. Classification
tasks use rank classification (each option scored as a target, the summed log-likelihood's
argmax is the prediction, any correct option counts; t5's `rank_classification`), the rest
greedy decoding and the task's metric (SQuAD EM/F1, BLEU, ROUGE). Inverse templates are never
evaluated.

Examples are written exactly as training writes them (`formats.render`, then
`instruction_pipeline.encode_pair`: inputs + EOS, targets + EOS), so rank classification
scores a model on the rows it was tuned on. All examples of a task, over its templates and
both splits, go to the model together in fixed-size batches (`evaluation.score` /
`decoding.decode`, sharded on the mesh when one is given).
"""
from __future__ import annotations

import json
import zlib
from typing import Any, Sequence

import jax
import numpy as np

from t5x_lite import decoding, evaluation, paths
from t5x_lite.data import instruction_pipeline
from t5x_lite.data.tasks import formats as formats_lib
from t5x_lite.data.tasks import task as task_lib
from t5x_lite.errors import InputError
from t5x_lite.models import heads, model_format

METRIC_NAMES = {"rank_classification": "accuracy", "exact_match": "exact_match", "f1": "f1",
                "bleu": "bleu", "rouge": "rougeLsum"}
EVAL_SPLITS = ("dev", "test")


def _bucket(length: int, multiple: int = 32) -> int:
    return max(-(-length // multiple) * multiple, multiple)


def render_cases(task, split: str, vocabulary, eos_id: int, *, data_dir=None,
                 fmt: formats_lib.Format = formats_lib.ZERO_SHOT, max_examples: int = 200,
                 max_inputs_length: int = 512, seed: int = 0) -> list[dict]:
    """The split's first `max_examples` usable examples in every evaluation template, as
    {example, template, inputs (ids), targets (ids), references, and for classification
    options (ids), option_names, correct}."""
    records = task.records(split, data_dir)
    train = task.records("train", data_dir) if fmt.shots else ()
    count = lambda text: len(vocabulary.encode(text))
    cases, used = [], 0
    for index in range(len(records)):
        if used >= max_examples:
            break
        example = task.example(records[index])
        if example is None:
            continue
        used += 1
        rng = np.random.default_rng([seed, zlib.crc32(task.name.encode()), index])
        exemplars = instruction_pipeline.draw_exemplars(task, train, rng, fmt.shots)
        for template in task.eval_template_indices:
            case = _render_case(task, example, fmt, template, exemplars, count, vocabulary,
                                eos_id, max_inputs_length)
            if case is not None:
                cases.append(dict(case, example=used - 1))
    return cases


def _render_case(task, example, fmt, template, exemplars, count, vocabulary, eos_id,
                 max_inputs_length):
    rendered = formats_lib.render(task, example, fmt, template, exemplars, count)
    if rendered is None:
        return None
    inputs, targets = instruction_pipeline.encode_pair(vocabulary, *rendered, eos_id)
    case = {"template": template, "inputs": inputs[-max_inputs_length:], "targets": targets,
            "references": list(example.get("answers") or [example["answer"]])}
    if task.metric == "rank_classification":
        # Each option is written as the template writes the answer.
        case["options"] = [
            instruction_pipeline.encode_pair(vocabulary, "", formats_lib.render_plain(
                task, {**example, "answer": option}, fmt, template)[1], eos_id)[1]
            for option in example["options"]]
        case["correct"] = task_lib.correct_options(example)
        case["option_names"] = list(example["options"])
    return case


def _classify(module, params, cases, batch_size, mesh, rules, length_normalize):
    result = evaluation.rank_classification(
        module, params, cases, length_normalize=length_normalize, batch_size=batch_size,
        inputs_length=_bucket(max(len(c["inputs"]) for c in cases)),
        targets_length=_bucket(max(len(o) for c in cases for o in c["options"]), 8),
        mesh=mesh, rules=rules)
    hits = [p in set(c["correct"]) for p, c in zip(result["predictions"], cases)]
    return [100.0 * h for h in hits]


def _classify_with_head(head, params, cases, batch_size, mesh, rules):
    """A fine-tuned classifier's hits: its likeliest label is one of the case's answers."""
    from t5x_lite import classification  # it renders its training data here: imported late

    logits = classification.predict(head, params, [c["inputs"] for c in cases],
                                    batch_size=batch_size, mesh=mesh, rules=rules)
    picks = [head.labels[i] for i in np.argmax(logits, axis=-1)]
    return [100.0 * (pick in {c["option_names"][j] for j in c["correct"]})
            for pick, c in zip(picks, cases)]


def _generate(module, prepared, cases, vocabulary, batch_size, max_new_tokens, mesh, rules):
    fmt = model_format.of(module)
    texts = []
    for start in range(0, len(cases), batch_size):
        rows = [c["inputs"] for c in cases[start : start + batch_size]]
        out = decoding.decode(module, prepared, None if fmt.encoder_decoder else rows,
                              encoder_inputs=rows if fmt.encoder_decoder else None,
                              max_new_tokens=max_new_tokens, mesh=mesh,
                              logical_axis_rules=rules)
        for tokens in out["tokens"][:, 0]:
            tokens = [int(t) for t in tokens]
            if fmt.eos_id in tokens:
                tokens = tokens[: tokens.index(fmt.eos_id)]
            texts.append(vocabulary.decode(tokens))
    return texts


def _score_texts(metric: str, predictions: Sequence[str], references) -> float:
    if metric in ("exact_match", "f1"):
        return evaluation.squad(predictions, references)[metric]
    if metric == "bleu":
        width = max(len(r) for r in references)
        return evaluation.bleu(predictions, [list(r) + [r[0]] * (width - len(r))
                                             for r in references])["bleu"]
    return evaluation.rouge(predictions, [r[0] for r in references])["rougeLsum"]


def evaluate_task(module, params, prepared, task, vocabulary, *, batch_size: int = 32,
                  mesh=None, rules=None, max_new_tokens: int = 32,
                  length_normalize: bool = False, **render_kwargs) -> dict[str, Any]:
    """One task's scores per template and split, and FLAN's summaries (module docstring)."""
    eos_id = model_format.of(module).eos_id
    per_split = {split: render_cases(task, split, vocabulary, eos_id, **render_kwargs)
                 for split in EVAL_SPLITS}
    flat = [(split, case) for split in EVAL_SPLITS for case in per_split[split]]
    if not flat:
        raise ValueError(f"task {task.name!r}: no examples to evaluate in {EVAL_SPLITS}")
    cases = [case for _, case in flat]
    scores: dict[tuple[str, int], list[float]] = {}
    if task.metric == "rank_classification":
        hits = (_classify_with_head(module, params, cases, batch_size, mesh, rules)
                if isinstance(module, heads.ClassifierHead) else
                _classify(module, params, cases, batch_size, mesh, rules, length_normalize))
        for (split, case), hit in zip(flat, hits):
            scores.setdefault((split, case["template"]), []).append(hit)
        table = {key: float(np.mean(v)) for key, v in scores.items()}
    else:
        texts = _generate(module, prepared, cases, vocabulary, batch_size, max_new_tokens,
                          mesh, rules)
        grouped: dict[tuple[str, int], tuple[list, list]] = {}
        for (split, case), text in zip(flat, texts):
            predictions, references = grouped.setdefault((split, case["template"]), ([], []))
            predictions.append(text)
            references.append(case["references"])
        table = {key: _score_texts(task.metric, *pair) for key, pair in grouped.items()}
    return _summarize(task, per_split, table)


def _summarize(task, per_split, table) -> dict[str, Any]:
    templates = sorted({t for _, t in table})
    test = {t: table.get(("test", t), float("nan")) for t in templates}
    dev = {t: table.get(("dev", t), float("nan")) for t in templates}
    values = np.asarray(list(test.values()))
    best = max(templates, key=lambda t: (np.nan_to_num(dev[t], nan=-1.0), -t))
    summary = {
        "cluster": task.cluster, "metric": METRIC_NAMES[task.metric],
        "examples": {s: len({c["example"] for c in per_split[s]}) for s in per_split},
        "templates": {str(t): {"dev": dev[t], "test": test[t]} for t in templates},
        "mean": float(np.nanmean(values)), "std": float(np.nanstd(values)),
        "min": float(np.nanmin(values)), "max": float(np.nanmax(values)),
        "best_dev_template": int(best), "best_dev_template_test": test[best],
    }
    if task.metric == "rank_classification":
        summary["chance"] = float(np.mean([100.0 / len(c["options"])
                                           for c in per_split["test"]] or [np.nan]))
    return summary


def evaluate_tasks(module, params, vocabulary, task_names: Sequence[str], *,
                   output_dir: str | None = None, **kwargs) -> dict[str, Any]:
    """Every task of `task_names` (`evaluate_task`'s keyword arguments); with `output_dir`,
    writes results.json and results.md there (process 0, atomically)."""
    generates = any(task_lib.get(n).metric != "rank_classification" for n in task_names)
    # Decoding's layout, once, and only if some task decodes (rank classification scores).
    prepared = decoding.prepare_params(module, params) if generates else None
    tasks = {name: evaluate_task(module, params, prepared, task_lib.get(name), vocabulary,
                                 **kwargs) for name in task_names}
    results = {"tasks": tasks, "clusters": _cluster_means(tasks),
               "mean": float(np.mean([t["mean"] for t in tasks.values()]))}
    if output_dir is not None and jax.process_index() == 0:
        directory = paths.as_path(output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        paths.atomic_write_text(directory / "results.json", json.dumps(results, indent=1))
        paths.atomic_write_text(directory / "results.md", markdown_table(results))
    return results


def _cluster_means(tasks) -> dict[str, dict[str, float]]:
    clusters: dict[str, list] = {}
    for result in tasks.values():
        clusters.setdefault(result["cluster"], []).append(result)
    return {name: {"mean": float(np.mean([r["mean"] for r in rs])),
                   "best_dev_template_test": float(np.mean([r["best_dev_template_test"]
                                                            for r in rs]))}
            for name, rs in sorted(clusters.items())}


def markdown_table(results: dict[str, Any]) -> str:
    lines = ["| task | cluster | metric | dev / test examples | mean ± std over templates "
             "| best-dev template → test | min – max | chance |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["tasks"].items():
        chance = f"{r['chance']:.1f}" if "chance" in r else "–"
        lines.append(
            f"| {name} | {r['cluster']} | {r['metric']} | {r['examples']['dev']} / "
            f"{r['examples']['test']} | {r['mean']:.1f} ± {r['std']:.1f} | "
            f"#{r['best_dev_template']} → {r['best_dev_template_test']:.1f} | "
            f"{r['min']:.1f} – {r['max']:.1f} | {chance} |")
    lines.append(f"\nMean over tasks (mean over templates): {results['mean']:.2f}\n")
    return "\n".join(lines) + "\n"


def task_names_for(tasks: Sequence[str] | str | None = None, cluster: str | None = None,
                   mixture: str | None = None) -> list[str]:
    """The tasks an evaluation covers: named ones, or a mixture's, or a cluster's (within the
    mixture, when both are given)."""
    if tasks is not None:
        if cluster is not None or mixture is not None:
            raise InputError("name tasks, or a cluster and/or a mixture, not both")
        names = [t for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t]
        return [task_lib.get(name).name for name in names]
    if cluster is None and mixture is None:
        raise InputError("name the tasks to evaluate: tasks, a cluster or a mixture")
    from t5x_lite.data.tasks import mixtures

    names = mixtures.get(mixture).task_names() if mixture is not None else task_lib.names()
    if cluster is None:
        return names
    table = task_lib.clusters(names)
    if cluster not in table:
        raise InputError(f"no task of cluster {cluster!r} here; clusters: {sorted(table)}")
    return table[cluster]


def run(*, model, vocabulary, model_dir: str, tasks=None, cluster: str | None = None,
        mixture: str | None = None, output_dir: str | None = None,
        data_dir: str | None = None, shots: int = 0, instructions: str = "template",
        with_options: bool = True, max_examples: int = 200, batch_size: int = 32,
        max_inputs_length: int = 512, max_new_tokens: int = 32,
        length_normalize: bool = False, seed: int = 0, mesh_shape=None,
        logical_axis_rules=None, params=None) -> dict[str, Any]:
    """`t5x-lite eval --tasks=... | --cluster=... | --mixture=...`: the newest checkpoint of
    MODEL_DIR (or `params`) on those tasks; results.json / results.md in `output_dir`
    (default MODEL_DIR/task_eval)."""
    from t5x_lite import inference, partitioning

    from t5x_lite import classification  # imports this module: imported late

    names = task_names_for(tasks, cluster, mixture)
    head = classification.read_head(model, model_dir, names)  # a fine-tuned classifier's run
    model = model if head is None else head
    fmt = formats_lib.Format(f"{shots}_shot", shots=shots, with_options=with_options,
                             instructions=instructions)
    rules = logical_axis_rules or partitioning.DEFAULT_RULES
    params = inference.load(model, model_dir) if params is None else params
    output_dir = output_dir or str(paths.as_path(model_dir) / "task_eval")
    return evaluate_tasks(model, params, vocabulary, names, output_dir=output_dir,
                          data_dir=data_dir, fmt=fmt, max_examples=max_examples,
                          batch_size=batch_size, max_inputs_length=max_inputs_length,
                          max_new_tokens=max_new_tokens, length_normalize=length_normalize,
                          seed=seed, mesh=inference.job_mesh(mesh_shape), rules=rules)

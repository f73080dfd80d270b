"""Downstream evaluation: log-likelihood scoring, rank classification, and text metrics.

`score` gives the log-likelihood of each example's targets given its inputs, one example per
row (no packing, so no example can see another), built with the same feature converters as
training so a decoder-only model sees its inputs exactly as a prefix LM was trained on them.
Every batch has one fixed shape (the last is filled with copies whose results are dropped),
so the forward pass compiles once. `rank_classification` is the GPT-3 / T5 way to evaluate
multiple-choice tasks: score every option and pick the likeliest.

Perplexity over a whole split needs nothing new: `train_loop.evaluate(trainer, params,
dataset)` pools the summed loss of packed batches into loss / perplexity / accuracy; there is
no separate wrapper here.

Text metrics follow T5's `t5.evaluation.metrics` (scaled to 0-100). ROUGE-Lsum splits
summaries into sentences on newlines, never with nltk's punkt (which would need a download).
"""
from __future__ import annotations

import collections
import functools
import math
import re
import string
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from t5x_lite import partitioning
from t5x_lite.data import feature_converters as converters
from t5x_lite.models import model_format
from t5x_lite.trainer import mesh_and_rules, model_inputs

Example = Mapping[str, Sequence[int]]
_PUNCTUATION = frozenset(string.punctuation)


# ---------------------------------------------------------------------------- scoring
def _row(example: Example, fmt: model_format.ModelFormat, inputs_length: int,
         targets_length: int) -> dict[str, np.ndarray]:
    """One example as an unpacked, right-padded row of model features, built by the same
    feature converter (start id, prefix attention, loss mask) as training rows."""
    inputs = np.asarray(example.get("inputs", ()), np.int32).reshape(-1)
    targets = np.asarray(example["targets"], np.int32).reshape(-1)
    if len(targets) == 0:
        raise ValueError("an example has no targets: there is nothing to score")
    # Truncation would silently score a different question, so it is an error.
    if len(inputs) > inputs_length or len(targets) > targets_length:
        raise ValueError(f"an example has {len(inputs)} input and {len(targets)} target tokens, "
                         f"more than inputs_length={inputs_length} or "
                         f"targets_length={targets_length}")
    if fmt.architecture == "decoder":
        lengths = {"targets": inputs_length + targets_length}
    else:
        lengths = {"inputs": inputs_length, "targets": targets_length}
    features, _ = converters.to_packable({"inputs": inputs, "targets": targets}, fmt, lengths)
    padded_lengths = converters.packing_lengths(fmt.architecture, lengths)
    packed = {}
    for name, values in features.items():
        length = padded_lengths[name]
        packed[name] = np.pad(values, (0, length - len(values)))
        if name != "prefix":  # the packer's names: segment 1 for the example, 0 for padding
            packed[f"{name}_segment_ids"] = (np.arange(length) < len(values)).astype(np.int32)
            packed[f"{name}_positions"] = np.where(np.arange(length) < len(values),
                                                   np.arange(length), 0).astype(np.int32)
    return converters.convert(packed, fmt)


def _stack(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


@functools.lru_cache(maxsize=16)
def _scoring_fn(module: nn.Module, out_sharding):
    """Per-row summed target log-probability and token count, as one jit per module."""

    def forward(params, batch):
        logits = module.apply({"params": params}, **model_inputs(batch)).astype(jnp.float32)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        targets = batch["decoder_target_tokens"]
        token_ll = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        weights = batch["decoder_loss_weights"] > 0
        # `where`, not a product: a padding position's value never leaks in, even if not finite.
        return jnp.sum(jnp.where(weights, token_ll, 0.0), -1), jnp.sum(weights, -1)

    return jax.jit(forward, out_shardings=out_sharding)


def place_params(module, params, batch, mesh, rules):
    """Puts `params` on the mesh with the shardings the model's logical axes ask for."""
    with mesh_and_rules(mesh, rules):
        boxed = jax.eval_shape(
            lambda: module.init(jax.random.key(0), **model_inputs(batch))["params"])
    shardings = partitioning.param_shardings(boxed, mesh, rules)
    return partitioning.put_global(nn.unbox(params), shardings)


def score(
    module: nn.Module,
    params: Any,
    examples: Sequence[Example],
    *,
    batch_size: int,
    inputs_length: int,
    targets_length: int,
    mesh: Mesh | None = None,
    rules: partitioning.LogicalRules | None = None,
) -> list[dict[str, float | int]]:
    """Log-likelihood of each example's `targets` given its `inputs` (token id lists).

    The targets are scored as given (append EOS yourself to score it); every target token
    counts, whatever its id. Rows are read as the model's format says (models/model_format.py),
    exactly as training read them: a decoder-only row is [start] + inputs + targets
    (`inputs_length + targets_length` positions), its inputs attended causally or
    bidirectionally as the model was trained; an encoder-decoder model encodes the inputs (a
    lone EOS if empty). With a `mesh`, batches and parameters are sharded over it by `rules`
    (default `partitioning.DEFAULT_RULES`) and `batch_size` must divide over its batch shards.
    Returns, per example, `log_likelihood` (sum), `mean_log_likelihood` and `num_tokens`.
    """
    fmt = model_format.of(module)
    if batch_size <= 0 or inputs_length < 0 or targets_length <= 0:
        raise ValueError(f"need batch_size > 0, inputs_length >= 0 and targets_length > 0, got "
                         f"{batch_size}, {inputs_length}, {targets_length}")
    if fmt.encoder_decoder and inputs_length == 0:
        raise ValueError("an encoder-decoder model needs inputs_length >= 1")
    if not examples:
        return []
    for index, example in enumerate(examples):
        model_format.check_example(module, example.get("inputs", ()), example["targets"],
                                   f"example {index}")
    rows = [_row(e, fmt, inputs_length, targets_length) for e in examples]
    context, sharding, out_sharding = None, None, None
    if mesh is not None:
        rules = tuple(tuple(r) for r in (rules or partitioning.DEFAULT_RULES))
        divisor = partitioning.batch_divisor(mesh, rules)
        if batch_size % divisor:
            raise ValueError(f"batch_size={batch_size} must be a multiple of the {divisor} "
                             f"batch shards of mesh {dict(mesh.shape)}")
        sharding = partitioning.batch_sharding(mesh, rules)
        out_sharding = partitioning.replicated(mesh)
        params = place_params(module, params, _stack(rows[:1]), mesh, rules)
    forward = _scoring_fn(module, out_sharding)

    sums, counts = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # dummies, dropped below
        batch = _stack(chunk)
        if mesh is None:
            batch_sums, batch_counts = forward(params, batch)
        else:
            with mesh_and_rules(mesh, rules):
                batch_sums, batch_counts = forward(
                    params, {k: partitioning.put_global(v, sharding) for k, v in batch.items()})
        batch_sums, batch_counts = jax.device_get((batch_sums, batch_counts))
        sums.extend(np.asarray(batch_sums).tolist())
        counts.extend(np.asarray(batch_counts).tolist())
    return [
        {"log_likelihood": float(s), "mean_log_likelihood": float(s) / max(int(c), 1),
         "num_tokens": int(c)}
        for s, c in zip(sums[: len(rows)], counts[: len(rows)])
    ]


def rank_classification(
    module: nn.Module,
    params: Any,
    examples: Sequence[Mapping[str, Any]],
    *,
    length_normalize: bool = False,
    **score_kwargs,
) -> dict[str, Any]:
    """Picks, per example, the option (`options`: token id lists) its `inputs` make likeliest.

    Options are ranked by summed log-likelihood, or by its mean per token with
    `length_normalize` (which stops long options being penalised for their length). An
    example is correct when the pick is any of its `correct` option indices. Ties go to the
    first option. `score_kwargs` are `score`'s (batch_size, lengths, layout, mesh, ...);
    all options of all examples are scored together, so batches stay full.
    """
    flat, owners = [], []
    for index, example in enumerate(examples):
        if not example["options"]:
            raise ValueError(f"example {index} has no options")
        for option in example["options"]:
            flat.append({"inputs": example.get("inputs", ()), "targets": option})
            owners.append(index)
    key = "mean_log_likelihood" if length_normalize else "log_likelihood"
    scores: list[list[float]] = [[] for _ in examples]
    for owner, result in zip(owners, score(module, params, flat, **score_kwargs)):
        scores[owner].append(result[key])
    predictions = [int(np.argmax(s)) for s in scores]
    hits = [p in set(int(c) for c in e["correct"]) for p, e in zip(predictions, examples)]
    return {
        "accuracy": float(np.mean(hits)) if hits else math.nan,
        "predictions": predictions,
        "scores": scores,
    }


# ----------------------------------------------------------------------- text metrics
def _check_pairs(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to evaluate")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions equal to their reference, ignoring surrounding whitespace."""
    _check_pairs(predictions, references)
    hits = [p.strip() == r.strip() for p, r in zip(predictions, references)]
    return {"exact_match": 100.0 * float(np.mean(hits))}


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation (Rajpurkar et al. 2016's evaluation script, also T5's
    `qa_utils`): lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, reference: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: Sequence[str],
          references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """SQuAD exact match and token F1 (0-100) after `normalize_answer`, each the maximum over
    an example's references (T5's `squad` metric; also used for TriviaQA and NQ)."""
    _check_pairs(predictions, references)
    em, f1 = [], []
    for prediction, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        em.append(max(float(normalize_answer(prediction) == normalize_answer(r)) for r in refs))
        f1.append(max(_token_f1(prediction, r) for r in refs))
    return {"exact_match": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
         tokenize: str = "intl") -> dict[str, float]:
    """Corpus BLEU (sacrebleu, T5's settings: exp smoothing, 'intl' tokenizer), 0-100.

    Each reference is a string, or a list of strings when an example has several (every
    example must then have the same number).
    """
    import sacrebleu  # lazy: only text-metric users need it

    _check_pairs(predictions, references)
    if all(isinstance(r, str) for r in references):
        streams = [list(references)]
    else:
        counts = {len(r) for r in references}
        if len(counts) != 1:
            raise ValueError("every example needs the same number of references")
        streams = [list(s) for s in zip(*references)]
    result = sacrebleu.corpus_bleu(list(predictions), streams, smooth_method="exp",
                                   lowercase=False, tokenize=tokenize,
                                   use_effective_order=False)
    return {"bleu": float(result.score)}


def rouge(predictions: Sequence[str], references: Sequence[str],
          rouge_types: Sequence[str] = ("rouge1", "rouge2", "rougeLsum"),
          use_stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE F-measure over examples, 0-100, per type (rouge-score).

    rougeLsum treats each newline-separated line as a sentence: put summaries one sentence a
    line beforehand if you want sentence-level LCS (nltk is never asked to split them).
    """
    from rouge_score import rouge_scorer  # lazy: imports nltk

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer,
                                      split_summaries=False)
    totals = {name: 0.0 for name in rouge_types}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # (target, prediction) order
        for name in rouge_types:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / len(predictions) for name, total in totals.items()}

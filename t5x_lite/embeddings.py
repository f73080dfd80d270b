"""Sentence embeddings and a small nearest-neighbour search over them (`t5x-lite embed`).

An embedding is the mean of the model's final hidden states over a text's positions, L2-
normalised, so the dot product of two embeddings is their cosine similarity. One text is one
row (no packing: segment id 1 on its tokens, 0 on padding; padding never enters the mean and,
by the attention mask, never changes a token's state), read the way the model was trained:

  encoder          the text's ids then EOS (a masked-LM row ends with EOS); final states
                   (`outputs="hidden"`, the MLM head is not run)
  decoder          [start] then the text's ids; final-normed states of the causal stack (each
                   position sees only what precedes it; a weaker embedding than an encoder's)
  encoder_decoder  the text's ids then EOS through the encoder (`encode`), as Sentence-T5's
                   mean-pooling variant reads it

Rows longer than `max_length` are truncated (the EOS / start id is kept); `max_length` may not
exceed a learned position table (`model_format.max_positions`). Rows are sorted by length and
batched, each batch padded to a power-of-two length (at least 8) and to `batch_size` rows
(copies of its last row, dropped), so the forward pass compiles once per batch shape.

What the vectors are worth depends on the weights. Nothing here trains for similarity (no
contrastive fine-tuning): a masked-LM encoder's mean-pooled states are a known but weak
sentence embedding, and an untrained model's mostly reflect which tokens two texts share
(enough to find a paraphrase that keeps most of its words, tests/test_embeddings.py shows);
ranking by meaning needs a model trained for it. Cosines of such models crowd near 1
(unrelated texts score ~0.95 on a random bert_tiny): compare ranks, not absolute scores.

`search` is exact: a matrix product of (re-normalised) queries and index, the k-th best score
per query by `np.partition`, then the rows reaching it sorted by (score, index): ties go to the
lower index, also at the k-th place, so results are deterministic.

Input: a JSONL file (`text_field` of each line: text, or a list of token ids), a TFDS split
given as `tfds:NAME[:VERSION][@SPLIT]` (read from `data_dir`, field `text_field`), or a
`pipeline.DatasetConfig` (its own `text_feature`). Queries are JSONL with the same field.

Files `run` writes (process 0, each atomically):
  OUTPUT.npy     float32 [n, d], row i the embedding of text i (np.load reads it)
  OUTPUT.jsonl   the sidecar next to it (`.npy` replaced by `.jsonl`): one line per row,
                 {"index": i, "text": ...} plus "id" when the input has one (a JSONL record's
                 "id" field; "NAME@SPLIT:INDEX" for a TFDS record)
  NEIGHBOURS     with queries: one line per query, {"query": text, ["id": ...,] "neighbours":
                 [{"index": i, "score": cosine, "text": ..., ["id": ...]}, ...]}, best first
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import evaluation, inference, partitioning, paths
from t5x_lite.data import pipeline
from t5x_lite.errors import InputError
from t5x_lite.models import model_format

TFDS_PREFIX = "tfds:"
MIN_BUCKET = 8
_EPSILON = 1e-12


# ------------------------------------------------------------------------------ rows
def _check_model(module) -> model_format.ModelFormat:
    if getattr(module, "trunk", None) is not None:
        raise ValueError(f"{type(module).__name__} is a head on a trunk: embed with the trunk "
                         "model itself (its language-model configuration)")
    return model_format.of(module)


def check_settings(module, max_length, batch_size) -> None:
    """`max_length` (>= 2, within a learned position table) and `batch_size` (>= 1)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise InputError(f"max_length must be an integer >= 2, got {max_length!r}")
    limit = model_format.max_positions(module)
    if limit is not None and max_length > limit:
        raise InputError(f"max_length={max_length} exceeds the model's learned position table "
                         f"({limit} positions)")


def text_row(module, fmt: model_format.ModelFormat, token_ids: Sequence[int],
             max_length: int) -> tuple[list[int], bool]:
    """The row the model reads for one text (module docstring) and whether it was cut."""
    ids = [int(t) for t in token_ids]
    truncated = len(ids) > max_length - 1
    ids = ids[: max_length - 1]
    row = [fmt.start_id] + ids if fmt.architecture == "decoder" else ids + [fmt.eos_id]
    return row, truncated


def text_rows(module, vocabulary, texts, max_length: int, where: str = "text"):
    """(rows, how many were truncated) of `texts` (strings, or lists of token ids); an id
    outside the vocabulary is an error naming `where` and the text's number."""
    fmt, rows, truncated = model_format.of(module), [], 0
    for index, text in enumerate(texts):
        label = f"{where} {index + 1}"
        row, cut = text_row(module, fmt, inference._token_ids({"text": text}, "text",
                                                              vocabulary, label), max_length)
        model_format.check_row(module, row, label)
        rows.append(row)
        truncated += cut
    return rows, truncated


def _bucket(length: int) -> int:
    return max(MIN_BUCKET, 1 << (int(length) - 1).bit_length())


def _batch_arrays(rows: Sequence[Sequence[int]], length: int, pad_id: int):
    tokens = np.full((len(rows), length), pad_id, np.int32)
    segment_ids = np.zeros((len(rows), length), np.int32)
    positions = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        segment_ids[i, : len(row)] = 1
        positions[i, : len(row)] = np.arange(len(row))
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


# ------------------------------------------------------------------------------ model
def _hidden(module, architecture: str, params, tokens, segment_ids, positions):
    variables = {"params": params}
    if architecture == "encoder":
        return module.apply(variables, encoder_input_tokens=tokens,
                            encoder_segment_ids=segment_ids, encoder_positions=positions,
                            outputs="hidden")
    if architecture == "decoder":
        return module.apply(variables, decoder_input_tokens=tokens,
                            decoder_segment_ids=segment_ids, decoder_positions=positions,
                            outputs="hidden")
    return module.apply(variables, tokens, segment_ids, positions, method="encode")


@functools.lru_cache(maxsize=16)
def _embedding_fn(module, architecture: str, out_sharding):
    """Mean-pooled, L2-normalised final states per row, as one jit per module (and shape)."""

    def forward(params, batch):
        hidden = _hidden(module, architecture, params, batch["tokens"], batch["segment_ids"],
                         batch["positions"]).astype(jnp.float32)
        mask = (batch["segment_ids"] > 0)[..., None]
        # `where`, not a product: a padding state never leaks in, even if not finite.
        total = jnp.sum(jnp.where(mask, hidden, 0.0), axis=1)
        mean = total / jnp.maximum(jnp.sum(mask, axis=1), 1).astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(mean * mean, axis=-1, keepdims=True))
        return mean / jnp.maximum(norm, _EPSILON)

    return jax.jit(forward, out_shardings=out_sharding)


def _init_features(architecture: str, tokens) -> dict[str, Any]:
    if architecture == "encoder":
        return {"encoder_input_tokens": tokens}
    if architecture == "decoder":
        return {"decoder_input_tokens": tokens}
    return {"encoder_input_tokens": tokens, "decoder_input_tokens": tokens}


def embed_texts(module, params, vocabulary, texts: Sequence[str | Sequence[int]], *,
                max_length: int = 128, batch_size: int = 32, mesh=None,
                logical_axis_rules=None, where: str = "text") -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings [len(texts), embed_dim] float32 (module
    docstring). A text is a string (the vocabulary encodes it) or a list of token ids. With
    a `mesh`, rows are sharded over its batch axes and params as the logical-axis rules
    (default `partitioning.DEFAULT_RULES`) say; `batch_size` is rounded up to a multiple of
    the mesh's batch shards."""
    fmt = _check_model(module)
    check_settings(module, max_length, batch_size)
    rows, _ = text_rows(module, vocabulary, texts, max_length, where)
    return _embed_rows(module, fmt, params, rows, batch_size, mesh, logical_axis_rules)


def _embed_rows(module, fmt, params, rows, batch_size, mesh, rules) -> np.ndarray:
    if not rows:
        return np.zeros((0, module.config.embed_dim), np.float32)
    architecture = fmt.architecture
    return over_rows(lambda sharding: _embedding_fn(module, architecture, sharding), module,
                     params, rows, _init_features(architecture, jnp.zeros((1, MIN_BUCKET),
                                                                          jnp.int32)),
                     batch_size=batch_size, mesh=mesh, rules=rules)


def over_rows(make_forward, module, params, rows: Sequence[Sequence[int]], init_features, *,
              batch_size: int, mesh=None, rules=None) -> np.ndarray:
    """`make_forward(out_sharding)(params, batch)` → one float32 vector per row, over token-id
    rows read whole (each its own segment): rows go in length order, in full batches of
    `batch_size` padded to a power-of-two length bucket (so few shapes compile), sharded on
    `mesh` when given (params placed as `init_features` build them). Returns them in the
    order of `rows`."""
    sharding = out_sharding = None
    if mesh is not None:
        rules = tuple(tuple(r) for r in (rules or partitioning.DEFAULT_RULES))
        divisor = partitioning.batch_divisor(mesh, rules)
        batch_size = -(-batch_size // divisor) * divisor
        sharding = partitioning.batch_sharding(mesh, rules)
        out_sharding = partitioning.replicated(mesh)
        params = evaluation.place_params(module, params, init_features, mesh, rules)
    else:
        params = jax.device_put(params)  # once, not per batch
    forward = make_forward(out_sharding)
    pad_id = model_format.of(module).pad_id or 0
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    result = None
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        chunk = [rows[i] for i in chosen]
        chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # copies, dropped below
        batch = _batch_arrays(chunk, _bucket(max(len(r) for r in chunk)), pad_id)
        if mesh is None:
            out = forward(params, batch)
        else:
            from t5x_lite.trainer import mesh_and_rules

            with mesh_and_rules(mesh, rules):
                out = forward(params, {k: partitioning.put_global(v, sharding)
                                       for k, v in batch.items()})
        out = np.asarray(jax.device_get(out), np.float32)
        if result is None:
            result = np.zeros((len(rows), out.shape[1]), np.float32)
        result[chosen] = out[: len(chosen)]
    return result


# ------------------------------------------------------------------------------ search
def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a [n, d] array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, _EPSILON)


def search(index_embeddings: np.ndarray, query_embeddings: np.ndarray, k: int = 5,
           *, query_chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest index rows of each query by cosine similarity: (indices int64 [q, k'],
    scores float32 [q, k']), best first, k' = min(k, n). Rows are re-normalised, so any
    vectors work; equal scores are ordered by index (lower first), also at the k-th place."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    index = _unit_rows(index_embeddings, "index_embeddings")
    queries = _unit_rows(query_embeddings, "query_embeddings")
    n = index.shape[0]
    if n == 0:
        raise ValueError("the index is empty")
    if queries.shape[1] != index.shape[1]:
        raise ValueError(f"query dimension {queries.shape[1]} != index dimension "
                         f"{index.shape[1]}")
    k = min(k, n)
    indices = np.zeros((len(queries), k), np.int64)
    scores = np.zeros((len(queries), k), np.float32)
    for start in range(0, len(queries), query_chunk):
        block = queries[start : start + query_chunk] @ index.T  # [chunk, n] cosines
        if k < n:  # the k-th best score; every index reaching it is a candidate
            kth = -np.partition(-block, k - 1, axis=1)[:, k - 1]
        for row, similarities in enumerate(block):
            candidates = (np.flatnonzero(similarities >= kth[row]) if k < n
                          else np.arange(n))
            best = candidates[np.lexsort((candidates, -similarities[candidates]))][:k]
            indices[start + row] = best
            scores[start + row] = similarities[best]
    return indices, scores


# ------------------------------------------------------------------------------ job
def dataset_from_spec(spec: str, text_field: str = "text",
                      data_dir: str | None = None) -> pipeline.DatasetConfig:
    """`tfds:NAME[:VERSION][@SPLIT]` (split default 'train') as a DatasetConfig."""
    name, _, split = spec[len(TFDS_PREFIX):].partition("@")
    if not name:
        raise InputError(f"{spec!r}: expected tfds:NAME[:VERSION][@SPLIT]")
    return pipeline.DatasetConfig(name=name, split=split or "train", data_dir=data_dir,
                                  text_feature=text_field)


def read_texts(*, input_path: str | None = None, data: pipeline.DatasetConfig | None = None,
               text_field: str = "text", max_texts: int | None = None, data_dir=None,
               ) -> tuple[list, list]:
    """(texts, ids) of a JSONL file (`text_field` of each line; text or token ids; "id" if
    present, else None), a `tfds:` spec, or a DatasetConfig (its `text_feature`)."""
    if (input_path is None) == (data is None):
        raise InputError("give one of input_path (--input: JSONL, or tfds:NAME[@SPLIT]) and "
                         "data (a DatasetConfig, e.g. --gin.embeddings.run.data=%EVAL_DATA)")
    if input_path is not None and input_path.startswith(TFDS_PREFIX):
        data = dataset_from_spec(input_path, text_field, data_dir)
    if data is not None:
        texts = list(data.texts(max_texts))
        return texts, [f"{data.name}@{data.split}:{i}" for i in range(len(texts))]
    records = inference.read_jsonl(input_path, [text_field])[:max_texts]
    return [r[text_field] for r in records], [r.get("id") for r in records]


def _entry(texts, ids, index: int, score: float | None = None) -> dict:
    entry = {"index": index} if score is None else {"index": index, "score": score}
    entry["text"] = texts[index]
    if ids[index] is not None:
        entry["id"] = ids[index]
    return entry


def sidecar_path(output_path: str) -> str:
    return output_path[: -len(".npy")] + ".jsonl"


def run(*, model, vocabulary, model_dir: str, output_path: str,
        input_path: str | None = None, data: pipeline.DatasetConfig | None = None,
        text_field: str = "text", queries_path: str | None = None,
        neighbours_path: str | None = None, k: int = 5, max_length: int = 128,
        batch_size: int = 32, max_texts: int | None = None, data_dir: str | None = None,
        mesh_shape=None, logical_axis_rules=partitioning.DEFAULT_RULES,
        params=None) -> dict[str, Any]:
    """Embeds the texts of `input_path` (JSONL, or `tfds:NAME[:VERSION][@SPLIT]` read from
    `data_dir`) or of `data` (a DatasetConfig); process 0 writes OUTPUT.npy and its JSONL
    sidecar (module docstring). With `queries_path` (JSONL, the same `text_field`), also
    each query's `k` nearest texts to `neighbours_path`. `max_texts` keeps the first texts
    only. Returns {"embeddings", "entries", "neighbours" (None without queries),
    "truncated"}."""
    if not str(output_path).endswith(".npy"):
        raise InputError(f"output_path={output_path!r} must end in .npy (the JSONL sidecar "
                         "goes next to it)")
    if (queries_path is None) != (neighbours_path is None):
        raise InputError("queries_path and neighbours_path go together (--queries and "
                         "--neighbours)")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if max_texts is not None and (not isinstance(max_texts, int) or max_texts < 1):
        raise InputError(f"max_texts must be a positive integer or None, got {max_texts!r}")
    fmt = _check_model(model)
    check_settings(model, max_length, batch_size)
    texts, ids = read_texts(input_path=input_path, data=data, text_field=text_field,
                            max_texts=max_texts, data_dir=data_dir)
    queries, query_ids = ([], [])
    if queries_path is not None:
        query_records = inference.read_jsonl(queries_path, [text_field])
        queries = [r[text_field] for r in query_records]
        query_ids = [r.get("id") for r in query_records]
    source = input_path or f"{data.name}@{data.split}"
    rows, truncated = text_rows(model, vocabulary, texts, max_length, f"{source} record")
    query_rows, query_truncated = text_rows(model, vocabulary, queries, max_length,
                                            f"{queries_path} record")
    rows, truncated = rows + query_rows, truncated + query_truncated
    params = inference.load(model, model_dir) if params is None else params
    mesh = inference.job_mesh(mesh_shape)
    vectors = _embed_rows(model, fmt, params, rows, batch_size, mesh, logical_axis_rules)
    embeddings, query_vectors = vectors[: len(texts)], vectors[len(texts):]
    entries = [_entry(texts, ids, i) for i in range(len(texts))]
    neighbours = None
    if queries_path is not None:
        found, scores = search(embeddings, query_vectors, k)
        neighbours = []
        for q, (row_indices, row_scores) in enumerate(zip(found, scores)):
            record = {"query": queries[q]}
            if query_ids[q] is not None:
                record["id"] = query_ids[q]
            record["neighbours"] = [_entry(texts, ids, int(i), float(s))
                                    for i, s in zip(row_indices, row_scores)]
            neighbours.append(record)
    if jax.process_index() == 0:  # every process computed the same vectors
        inference.write_jsonl_atomically(sidecar_path(output_path), entries)
        with paths.atomic_output(output_path, binary=True) as f:
            np.save(f, embeddings)
        if neighbours is not None:
            inference.write_jsonl_atomically(neighbours_path, neighbours)
    return {"embeddings": embeddings, "entries": entries, "neighbours": neighbours,
            "truncated": truncated}

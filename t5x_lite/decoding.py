"""Cached autoregressive decoding: greedy, temperature / top-k / top-p sampling, beam search.

Both architectures decode the same way (models/incremental.py runs the model):
  1. the trained parameters are put into decoding's layout (`prepare_params`);
  2. (encoder-decoder) the encoder runs once; each cross-attention projects its keys and
     values once, at prefill, into the 'cache' collection;
  3. prefill: the prompts (right-padded, of any lengths) go through the model in one pass,
     writing every layer's keys/values at their positions;
  4. a compiled `lax.while_loop` feeds one token per step, each example at its own position,
     until every sequence has produced EOS or `max_new_tokens` tokens.
`decode_uncached` recomputes the whole sequence each step: the slow, obviously correct
reference the tests compare against.

Inputs are lists of token ids; outputs are dicts of numpy arrays (`tokens` [batch, samples or
beams, max_new_tokens], padded with 0 after EOS; `scores`, the log-probability of each
sequence under the model, length-penalised for beam search).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.errors import InputError
from t5x_lite.models import incremental, model_format

NEG_INF = -1e10


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How to pick tokens. temperature 0 is greedy; `beam_size` > 1 is beam search.

    `top_k` keeps the k most likely tokens, `top_p` the smallest set whose probability reaches
    p (nucleus sampling, Holtzman et al. 2020). `length_penalty_alpha` is T5's / GNMT's
    ((5 + length) / 6) ** alpha (Wu et al. 2016) for beam search.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    num_samples: int = 1
    beam_size: int = 1
    length_penalty_alpha: float = 0.6

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"bad sampling settings {self}")
        if self.beam_size > 1 and self.num_samples > 1:
            raise ValueError("num_samples applies to sampling; beam search returns beam_size")


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets logits outside the top-k / nucleus to -inf (the most likely token always stays)."""
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1,
                         keepdims=True)
        logits = jnp.where(logits < cutoff, NEG_INF, logits)
    return logits


def choose_tokens(logits: jax.Array, keys: jax.Array, strategy: Strategy) -> jax.Array:
    """One token per row: argmax, or a sample from the filtered, tempered distribution."""
    if strategy.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / strategy.temperature, strategy.top_k, strategy.top_p)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


# Prompts (and T5 inputs) are padded to a multiple of this, so batches of nearby lengths share
# one compiled program (a compile takes seconds; the padding costs a little prefill).
LENGTH_BUCKET = 32


def _bucketed(length: int) -> int:
    return -(-length // LENGTH_BUCKET) * LENGTH_BUCKET


def _pad(rows: Sequence[Sequence[int]]) -> np.ndarray:
    length = _bucketed(max(1, max(len(r) for r in rows)))
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _prompts(fmt: model_format.ModelFormat, prompts, encoder_inputs):
    """Decoder prompts and their lengths. Each starts with the format's start id, as training
    rows do: [start] for an encoder-decoder, [start] + prompt for a decoder-only model (so an
    empty prompt is fine)."""
    if fmt.encoder_decoder:
        rows = [[fmt.start_id]] * len(encoder_inputs)
    else:
        rows = [[fmt.start_id, *p] for p in prompts]
    return _pad(rows), np.asarray([len(r) for r in rows], np.int32)


def _check_requests(module, fmt, prompts, encoder_inputs, max_new_tokens: int) -> None:
    """One-line errors for requests the model cannot read (see model_format.check_prompt)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    rows = encoder_inputs if fmt.encoder_decoder else prompts
    if rows is None:
        raise ValueError("an encoder-decoder model decodes from encoder_inputs, a decoder-only "
                         "model from prompts")
    name = "encoder input" if fmt.encoder_decoder else "prompt"
    for index, row in enumerate(rows):
        model_format.check_prompt(module, row, max_new_tokens, f"{name} {index}")


# --------------------------------------------------------------------------- search loops
@functools.partial(jax.jit, static_argnames=("model", "strategy", "max_new_tokens", "eos_id"))
def _sample_loop(model, params, prompt, prompt_lengths, encoder_inputs, encoder_lengths, seeds,
                 *, strategy, max_new_tokens, eos_id):
    """Prefill, then one `while_loop` per cache length of `cache_lengths`: a step attends over
    the slots filled so far rounded up to LENGTH_BUCKET, not the whole cache."""
    batch = prompt.shape[0]
    encoded_length = None if encoder_inputs is None else encoder_inputs.shape[1]
    lengths = cache_lengths(prompt.shape[1], model.max_length)
    first = model.at_length(lengths[0])
    cache = first.init_cache(batch, encoded_length)
    logits, cache, extra = first.prefill(params, cache, prompt, prompt_lengths, encoder_inputs,
                                         encoder_lengths)
    keys = jax.vmap(jax.random.key)(seeds)

    def pick(logits, step):
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
        token = choose_tokens(logits, step_keys, strategy)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], -1)[:, 0]
        return token, log_prob

    token, log_prob = pick(logits, 0)
    out = jnp.zeros((batch, max_new_tokens), jnp.int32).at[:, 0].set(token)
    state = dict(step=1, token=token, out=out, done=token == eos_id, score=log_prob,
                 position=prompt_lengths, cache=cache)

    def body(stage, s):
        logits, cache = stage.step(params, s["cache"], s["token"], s["position"], extra)
        token, log_prob = pick(logits, s["step"])
        token = jnp.where(s["done"], 0, token)
        out = s["out"].at[:, s["step"]].set(token)
        return dict(step=s["step"] + 1, token=token, out=out,
                    done=s["done"] | (token == eos_id),
                    score=s["score"] + jnp.where(s["done"], 0.0, log_prob),
                    position=s["position"] + 1, cache=cache)

    for length in lengths:
        stage = model.at_length(length)
        state["cache"] = stage.grow_cache(state["cache"], batch, encoded_length)
        # Step s writes position <= prompt.shape[1] + s - 1, which must be < length.
        last = min(max_new_tokens, length - prompt.shape[1] + 1)
        state = jax.lax.while_loop(
            lambda s, last=last: (s["step"] < last) & ~jnp.all(s["done"]),
            functools.partial(body, stage), state)
    return state["out"], state["score"]


def cache_lengths(prompt_length: int, max_length: int) -> list[int]:
    """The cache lengths a sampling loop grows through: LENGTH_BUCKET more slots each time, so
    the attention of a step reads at most LENGTH_BUCKET - 1 slots not yet written (measured:
    the attention products were a third of an int8 decode step, and a cache of fewer slots
    costs in proportion: experiments/benchmarks/README.md). Each length compiles its own step."""
    return [*range(prompt_length + LENGTH_BUCKET, max_length, LENGTH_BUCKET), max_length]


def sample(module: nn.Module, params: Any, prompt: jax.Array, prompt_lengths: jax.Array,
           seeds: jax.Array, *, strategy: Strategy, max_new_tokens: int,
           stop_at_eos: bool = True) -> tuple[jax.Array, jax.Array]:
    """One continuation per prompt row, on device arrays, callable inside `jax.jit`.

    What RL rollouts call, so samples never leave the devices between generation and
    scoring: `prompt` [batch, Lp] right-padded ids without the start token and their lengths
    (an encoder-decoder encodes them; an empty one is read as a lone EOS), `seeds` [batch]
    uint32. The format supplies the start id, EOS and prefix attention, as in `decode`.
    `params` are trained params (or a `DecodeParams`). Returns (tokens [batch,
    max_new_tokens], padded after EOS; lengths [batch], counting the EOS if produced).
    """
    fmt = model_format.of(module)
    batch = prompt.shape[0]
    eos_id = fmt.eos_id if stop_at_eos else -1
    params = incremental.prepare(module, params).params
    start = jnp.full((batch, 1), fmt.start_id, jnp.int32)
    if fmt.encoder_decoder:
        empty = (prompt_lengths == 0)[:, None] & (jnp.arange(prompt.shape[1])[None] == 0)
        encoder_inputs = jnp.where(empty, fmt.eos_id, prompt).astype(jnp.int32)
        encoder_lengths = jnp.maximum(prompt_lengths, 1).astype(jnp.int32)
        decoder_prompt, decoder_lengths = start, jnp.ones((batch,), jnp.int32)
    else:
        encoder_inputs = encoder_lengths = None
        decoder_prompt = jnp.concatenate([start, prompt.astype(jnp.int32)], axis=1)
        decoder_lengths = (prompt_lengths + 1).astype(jnp.int32)
    model = incremental.for_model(type(module), module.config,
                                  decoder_prompt.shape[1] + max_new_tokens)
    tokens, _ = _sample_loop(model, params, decoder_prompt, decoder_lengths, encoder_inputs,
                             encoder_lengths, seeds, strategy=strategy,
                             max_new_tokens=max_new_tokens, eos_id=eos_id)
    is_eos = tokens == eos_id
    ended = jnp.any(is_eos, axis=1)
    lengths = jnp.where(ended, jnp.argmax(is_eos, axis=1) + 1, max_new_tokens)
    tokens = jnp.where(jnp.arange(max_new_tokens)[None] < lengths[:, None], tokens, fmt.pad_id)
    return tokens, lengths.astype(jnp.int32)


def length_penalty(length, alpha: float):
    """GNMT / T5 beam-search length normalisation: ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=("model", "beam_size", "alpha", "max_new_tokens",
                                             "eos_id"))
def _beam_loop(model, params, prompt, prompt_lengths, encoder_inputs, encoder_lengths, *,
               beam_size, alpha, max_new_tokens, eos_id):
    """Beam search; finished hypotheses leave the live beams and compete on penalised score."""
    batch = prompt.shape[0]
    repeat = lambda x: None if x is None else jnp.repeat(x, beam_size, axis=0)
    prompt, prompt_lengths = repeat(prompt), repeat(prompt_lengths)
    encoder_inputs, encoder_lengths = repeat(encoder_inputs), repeat(encoder_lengths)
    encoded_length = None if encoder_inputs is None else encoder_inputs.shape[1]
    cache = model.init_cache(batch * beam_size, encoded_length)
    logits, cache, extra = model.prefill(params, cache, prompt, prompt_lengths, encoder_inputs,
                                         encoder_lengths)
    vocab = logits.shape[-1]
    # Only the first beam of each example is live at the start (the others are copies).
    live_scores = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (beam_size - 1)), (batch, 1))
    state = dict(
        step=0, logits=logits, cache=cache, position=prompt_lengths,
        live_tokens=jnp.zeros((batch, beam_size, max_new_tokens), jnp.int32),
        live_scores=live_scores,
        finished_tokens=jnp.zeros((batch, beam_size, max_new_tokens), jnp.int32),
        finished_scores=jnp.full((batch, beam_size), NEG_INF),
    )
    def reorder_cache(cache, flat_beams):
        return jax.tree.map(lambda x: jnp.take(x, flat_beams, axis=0), cache)

    def cond(s):
        best_possible = s["live_scores"][:, 0] / length_penalty(max_new_tokens, alpha)
        worst_finished = jnp.min(s["finished_scores"], axis=1)
        improvable = best_possible > worst_finished
        return (s["step"] < max_new_tokens) & jnp.any(improvable | (worst_finished <= NEG_INF))

    def body(s):
        step = s["step"]
        log_probs = jax.nn.log_softmax(s["logits"]).reshape(batch, beam_size, vocab)
        candidates = (s["live_scores"][:, :, None] + log_probs).reshape(batch, -1)
        # 2k candidates: enough to keep k live ones even if k of them end here.
        top_scores, top_ids = jax.lax.top_k(candidates, 2 * beam_size)
        beam, token = top_ids // vocab, (top_ids % vocab).astype(jnp.int32)
        tokens = jnp.take_along_axis(s["live_tokens"], beam[:, :, None], axis=1)
        tokens = tokens.at[:, :, step].set(token)
        is_eos = token == eos_id
        # Finished: merge the new EOS hypotheses into the finished set by penalised score.
        new_finished = jnp.where(is_eos, top_scores / length_penalty(step + 1, alpha), NEG_INF)
        all_finished = jnp.concatenate([s["finished_scores"], new_finished], axis=1)
        all_finished_tokens = jnp.concatenate([s["finished_tokens"], tokens], axis=1)
        keep = jax.lax.top_k(all_finished, beam_size)[1]
        finished_scores = jnp.take_along_axis(all_finished, keep, axis=1)
        finished_tokens = jnp.take_along_axis(all_finished_tokens, keep[:, :, None], axis=1)
        # Live: the best k candidates that did not end.
        live_candidates = jnp.where(is_eos, NEG_INF, top_scores)
        live_scores, keep = jax.lax.top_k(live_candidates, beam_size)
        live_tokens = jnp.take_along_axis(tokens, keep[:, :, None], axis=1)
        parent = jnp.take_along_axis(beam, keep, axis=1)
        flat_parent = (parent + jnp.arange(batch)[:, None] * beam_size).reshape(-1)
        cache = reorder_cache(s["cache"], flat_parent)
        next_tokens = jnp.take_along_axis(token, keep, axis=1).reshape(-1)
        logits, cache = model.step(params, cache, next_tokens, s["position"], extra)
        return dict(step=step + 1, logits=logits, cache=cache, position=s["position"] + 1,
                    live_tokens=live_tokens, live_scores=live_scores,
                    finished_tokens=finished_tokens, finished_scores=finished_scores)

    final = jax.lax.while_loop(cond, body, state)
    # Hypotheses still live at the end compete too (penalised at the maximum length), so an
    # example with fewer than beam_size finished ones is filled with its best live beams.
    live_penalised = jnp.where(final["live_scores"] <= NEG_INF / 2, NEG_INF,
                               final["live_scores"] / length_penalty(max_new_tokens, alpha))
    scores = jnp.concatenate([final["finished_scores"], live_penalised], axis=1)
    tokens = jnp.concatenate([final["finished_tokens"], final["live_tokens"]], axis=1)
    scores, keep = jax.lax.top_k(scores, beam_size)
    return jnp.take_along_axis(tokens, keep[:, :, None], axis=1), scores


# --------------------------------------------------------------------------- public API
prepare_params = incremental.prepare  # params -> DecodeParams, for many decode calls


def decode(
    module: nn.Module,
    params: Any,
    prompts: Sequence[Sequence[int]] | None = None,
    *,
    encoder_inputs: Sequence[Sequence[int]] | None = None,
    strategy: Strategy = Strategy(),
    max_new_tokens: int = 32,
    stop_at_eos: bool = True,
    seeds: Sequence[int] | int = 0,
    mesh=None,
    logical_axis_rules=None,
    quantize: str | None = None,
) -> dict[str, np.ndarray]:
    """Generates continuations of `prompts` (decoder-only) or targets for `encoder_inputs`.

    Prompts are token ids without the start token: the model's format
    (models/model_format.py) supplies it, the stop token (EOS) and how the prompt is attended,
    as in training. Returns {'tokens': [batch, n, max_new_tokens], 'scores': [batch, n]} with
    n = num_samples (sampling, greedy) or beam_size (beam search, best first); tokens after
    EOS are the format's pad id. `stop_at_eos=False` always generates `max_new_tokens`
    (benchmarks). `params` are the trained ones (converted on every call, int8 with
    `quantize='int8'`: models/quantization.py, greedy tokens may then differ from float32's)
    or `prepare_params(module, params, quantize)`, which keep their quantization. With a
    `mesh` (and the training rules), activations and caches are sharded as in training; pass
    params sharded as the train state holds them.
    """
    fmt = model_format.of(module)
    _check_requests(module, fmt, prompts, encoder_inputs, max_new_tokens)
    eos_id = fmt.eos_id if stop_at_eos else -1
    if mesh is None:
        return _decode(module, fmt, params, prompts, encoder_inputs, strategy, max_new_tokens,
                       eos_id, seeds, quantize)
    from t5x_lite.trainer import mesh_and_rules  # the same context the train step uses

    with mesh_and_rules(mesh, tuple(tuple(r) for r in logical_axis_rules)):
        return _decode(module, fmt, params, prompts, encoder_inputs, strategy, max_new_tokens,
                       eos_id, seeds, quantize)


def _decode(module, fmt, params, prompts, encoder_inputs, strategy, max_new_tokens, eos_id,
            seeds, quantize):
    prompt, lengths = _prompts(fmt, prompts, encoder_inputs)
    batch = len(prompt)
    model = incremental.for_model(type(module), module.config, prompt.shape[1] + max_new_tokens)
    params = incremental.prepare(module, params, quantize).params
    encoder_array = encoder_lengths = None
    if fmt.encoder_decoder:
        encoder_array = jnp.asarray(_pad(encoder_inputs))
        encoder_lengths = jnp.asarray([len(r) for r in encoder_inputs], jnp.int32)
    if strategy.beam_size > 1:
        tokens, scores = _beam_loop(model, params, jnp.asarray(prompt), jnp.asarray(lengths),
                                    encoder_array, encoder_lengths, beam_size=strategy.beam_size,
                                    alpha=strategy.length_penalty_alpha,
                                    max_new_tokens=max_new_tokens, eos_id=eos_id)
        order = jnp.argsort(-scores, axis=1)
        tokens = jnp.take_along_axis(tokens, order[:, :, None], axis=1)
        scores = jnp.take_along_axis(scores, order, axis=1)
        return {"tokens": _after_eos_padded(_on_host(tokens), eos_id, fmt.pad_id),
                "scores": _on_host(scores)}
    n = strategy.num_samples
    seeds = np.broadcast_to(np.asarray(seeds, np.int64), (batch,))
    # Sample j of prompt i uses seed (seed_i, j): reproducible per request.
    sample_seeds = np.asarray([hash((int(s), j)) % (2**31) for s in seeds for j in range(n)],
                              np.uint32)
    tile = lambda x: None if x is None else jnp.repeat(jnp.asarray(x), n, axis=0)
    tokens, scores = _sample_loop(model, params, tile(prompt), tile(lengths),
                                  tile(encoder_array), tile(encoder_lengths),
                                  jnp.asarray(sample_seeds), strategy=strategy,
                                  max_new_tokens=max_new_tokens, eos_id=eos_id)
    tokens = _on_host(tokens).reshape(batch, n, -1)
    return {"tokens": _after_eos_padded(tokens, eos_id, fmt.pad_id),
            "scores": _on_host(scores).reshape(batch, n)}


def _on_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host, also when the mesh spans processes (every process then
    gathers the same result)."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _after_eos_padded(tokens: np.ndarray, eos_id: int, pad_id: int) -> np.ndarray:
    after = np.cumsum(tokens == eos_id, axis=-1) - (tokens == eos_id) > 0
    return np.where(after, pad_id, tokens)


def decode_uncached(module, params, prompts=None, *, encoder_inputs=None,
                    max_new_tokens: int = 32) -> np.ndarray:
    """Greedy decoding by full recomputation each step: the reference for the cached path.

    Rows start with the format's start id and a prefix-LM prompt is attended bidirectionally,
    as in training. The sequence so far sits in a fixed-size buffer (later slots are pads a
    causal decoder cannot see), so the model compiles once per buffer size.
    """
    fmt = model_format.of(module)
    rows = encoder_inputs if fmt.encoder_decoder else prompts
    apply = jax.jit(module.apply)
    outputs = []
    for index in range(len(rows)):
        prefix = [fmt.start_id] + ([] if fmt.encoder_decoder else list(prompts[index]))
        buffer = np.full((1, len(prefix) + max_new_tokens), fmt.pad_id, np.int32)
        buffer[0, : len(prefix)] = prefix
        features = {}
        if fmt.bidirectional_inputs:
            features["decoder_causal_attention"] = jnp.asarray(
                np.arange(buffer.shape[1])[None] < len(prefix))
        generated: list[int] = []
        for step in range(max_new_tokens):
            position = len(prefix) + step - 1  # the last filled slot predicts the next token
            if fmt.encoder_decoder:
                source = jnp.asarray([encoder_inputs[index]], jnp.int32)
                logits = apply({"params": params}, source, jnp.asarray(buffer))
            else:
                logits = apply({"params": params}, jnp.asarray(buffer), **features)
            token = int(jnp.argmax(logits[0, position]))
            generated.append(token)
            buffer[0, position + 1] = token
            if token == fmt.eos_id:
                break
        outputs.append(generated + [fmt.pad_id] * (max_new_tokens - len(generated)))
    return np.asarray(outputs, np.int32)

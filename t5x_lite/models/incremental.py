"""Running a model one token at a time: decoding's parameter layout, cache, prefill and step.

Both architectures are driven the same way (decoding.py owns the search loops):
  * `prepare` puts trained parameters into decoding's layout, once: layers unrolled (a step
    then reads each layer's weights and cache where they lie, instead of slicing them out of
    stacked arrays and writing the cache back every step) and dense kernels features-first
    (layers.DenseGeneral: XLA:CPU streams them about twice as fast into a handful of rows);
  * `Incremental.prefill` runs the prompts (right-padded, of any lengths) in one pass and
    writes every layer's keys/values into the 'cache' collection; an encoder-decoder encodes
    once and projects each cross-attention's keys/values once;
  * `Incremental.step` feeds one token per example, each at its own position.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from flax import traverse_util

from t5x_lite.models import model_format, quantization, stacking


@flax.struct.dataclass
class DecodeParams:
    """Parameters already in decoding's layout (what `prepare` returns), maybe quantized."""

    params: Any
    quantize: str | None = flax.struct.field(pytree_node=False, default=None)


@functools.lru_cache(maxsize=32)
def for_model(module_type, config, max_length: int) -> "Incremental":
    """One instance per (architecture, config, cache length), so jitted loops compile once."""
    return Incremental(module_type(config), max_length)


def _decoding_modules(module: nn.Module, max_length: int) -> tuple[nn.Module, nn.Module]:
    unrolled = stacking.unscanned(module)
    return (unrolled.clone(decode="prefill", max_decode_length=max_length),
            unrolled.clone(decode="step", max_decode_length=max_length))


def _init_args(module: nn.Module, batch: int, length: int, encoded_length: int | None):
    tokens = jnp.zeros((batch, length), jnp.int32)
    if model_format.of(module).encoder_decoder:
        return jnp.zeros((batch, encoded_length or 1), jnp.int32), tokens
    return (tokens,)


def _logical_names(module: nn.Module) -> dict[tuple[str, ...], tuple[str, ...]]:
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *_init_args(module, 1, 1, 1)))
    flat = traverse_util.flatten_dict(dict(boxed["params"]))
    return {path: tuple(getattr(box, "names", ())) for path, box in flat.items()}


@functools.lru_cache(maxsize=32)
def _kernel_permutations(module_type, config) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{param path: axis permutation} from the trained (unrolled) layout to decoding's.

    Read off the logical axis names each layout declares (unique within every kernel), so it
    holds for any kernel shape, square ones included."""
    module = module_type(config)
    trained = _logical_names(stacking.unscanned(module))
    decoding = _logical_names(_decoding_modules(module, 1)[0])
    return {path: tuple(trained[path].index(name) for name in names)
            for path, names in decoding.items() if names != trained[path]}


def _with_scales(flat: dict, path: tuple[str, ...], num_output_axes: int) -> None:
    values, scale = quantization.quantize_rows(flat[path], num_output_axes)
    flat[path] = values
    flat[path[:-1] + (path[-1] + quantization.SCALE_SUFFIX,)] = scale


@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def _prepare(module_type, config, params, quantize):
    flat = traverse_util.flatten_dict(dict(stacking.unrolled_params(module_type(config), params)))
    for path, permutation in _kernel_permutations(module_type, config).items():
        flat[path] = jnp.transpose(flat[path], permutation)
        if quantize == "int8":  # [features..., inputs...]: permutation[0] = number of inputs
            _with_scales(flat, path, flat[path].ndim - permutation[0])
    if quantize == "int8":
        for path in [p for p in flat if p[-2:] == ("token_embed", "embedding")]:
            _with_scales(flat, path, 1)  # per vocabulary row: the output layer's channels
    return DecodeParams(traverse_util.unflatten_dict(flat), quantize)


def prepare(module: nn.Module, params: Any, quantize: str | None = None) -> DecodeParams:
    """Trained parameters (scanned or not) in decoding's layout; sharded params stay sharded.

    `decoding.decode` does this on every call it is given plain params; prepare once when
    decoding many batches with the same weights (it copies every weight). `quantize='int8'`
    stores the dense kernels and the token embedding as int8 with per-output-channel scales
    (quantization.py): a quarter of the bytes a decode step streams, at some accuracy.
    Prepared params keep their quantization (`quantize=None` accepts it as it is)."""
    quantization.check(quantize)
    if isinstance(params, DecodeParams):
        if quantize not in (None, params.quantize):
            raise ValueError(f"params were prepared with quantize={params.quantize!r}, "
                             f"decoding asked for quantize={quantize!r}")
        return params
    return _prepare(type(module), module.config, params, quantize)


class Incremental:
    """Prefill and step calls of one model, with its key/value cache in the 'cache' collection.

    `params` are always a `DecodeParams`' contents (see `prepare`)."""

    def __init__(self, module: nn.Module, max_length: int):
        self.module_type, self.config = type(module), module.config
        self.max_length = max_length
        self.format = model_format.of(module)
        self.encoder_decoder = self.format.encoder_decoder
        self.prefill_module, self.step_module = _decoding_modules(module, max_length)

    def init_cache(self, batch: int, encoded_length: int | None):
        args = _init_args(self.prefill_module, batch, self.max_length, encoded_length)
        shapes = jax.eval_shape(lambda: self.prefill_module.init(jax.random.key(0), *args))
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])

    def at_length(self, max_length: int) -> "Incremental":
        """The same model with a `max_length`-slot cache (its step attends over that many)."""
        return for_model(self.module_type, self.config, max_length)

    def grow_cache(self, cache, batch: int, encoded_length: int | None):
        """`cache` (from a shorter `at_length`) as this one's: self-attention caches gain empty
        slots at the end, which every step writes before it reads them; cross-attention
        caches (the encoder's keys/values) stay as they are."""
        target = jax.eval_shape(lambda: self.init_cache(batch, encoded_length))
        return jax.tree.map(
            lambda x, t: jnp.pad(x, [(0, want - have) for have, want in zip(x.shape, t.shape)]),
            cache, target)

    def prefill(self, params, cache, prompt, prompt_lengths, encoder_inputs=None,
                encoder_lengths=None):
        """Runs the right-padded prompts (a prefix LM's bidirectionally, as it was trained);
        returns (logits at each prompt's last token, cache, extra state)."""
        variables = {"params": params, "cache": cache}
        module = self.prefill_module
        batch, length = prompt.shape
        positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        if self.encoder_decoder:
            # From the lengths, not the ids: a pad id may be a real token elsewhere.
            encoder_segments = (jnp.arange(encoder_inputs.shape[1])[None]
                                < encoder_lengths[:, None]).astype(jnp.int32)
            encoded = module.apply({"params": params}, encoder_inputs, encoder_segments,
                                   method=module.encode)
            logits, mutated = module.apply(
                variables, encoded, prompt, encoder_segments, None, positions,
                method=module.decoder_logits, mutable=["cache"])
            # The decoder prompt is the single start token.
            return logits[:, 0], mutated["cache"], (encoded, encoder_segments)
        prefix = positions < prompt_lengths[:, None] if self.format.bidirectional_inputs else None
        logits, mutated = module.apply(variables, prompt, None, positions, prefix,
                                       logits_at=prompt_lengths - 1, mutable=["cache"])
        return logits[:, 0], mutated["cache"], ()

    def step(self, params, cache, tokens, positions, extra):
        """One token per row at `positions`: (next-token logits [batch, vocab], new cache)."""
        variables = {"params": params, "cache": cache}
        module = self.step_module
        if self.encoder_decoder:
            encoded, encoder_segments = extra
            logits, mutated = module.apply(
                variables, encoded, tokens[:, None], encoder_segments, None, positions[:, None],
                method=module.decoder_logits, mutable=["cache"])
        else:
            logits, mutated = module.apply(
                variables, tokens[:, None], None, positions[:, None], mutable=["cache"])
        return logits[:, 0], mutated["cache"]

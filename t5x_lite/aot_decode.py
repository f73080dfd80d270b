"""`t5x-lite compile --decode`: decoding's prefill and one decode step compiled for a TPU
slice, beside the train step (aot.py).

Serving a trained model holds, per device: the params in decoding's layout
(`incremental.prepare`, compiled here too, so the params carry the shardings XLA gives
them from the train state's), the key/value cache of `batch` rows and `max_length` slots,
and the temporaries of a prefill over the prompts or of one step. The programs are the ones
`decoding.sample` runs (`Incremental.prefill`, `Incremental.step`, on the mesh and rules of
the run). Decoding's modules unroll their layers, so XLA's counts cover every layer; a
step reads every weight once, so its roofline time is memory-bound.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from t5x_lite import tpu_topology
from t5x_lite.aot import (Program, compile_described, fits_on, gib, memory_lines, sharded_bytes,
                          verdict)
from t5x_lite.models import incremental, model_format


@dataclasses.dataclass
class Decoding:
    """The compiled prefill and step of one decoding shape."""

    batch: int
    prompt_length: int  # a decoder's prompt; an encoder-decoder's encoder inputs
    max_length: int  # cache slots of the decoder
    params_bytes: int  # per device, in decoding's layout
    cache_bytes: int
    prefill: Program
    step: Program

    def fits(self, chip: tpu_topology.Chip) -> bool:
        return all(fits_on(program, chip)[0] for program in (self.prefill, self.step))


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def compile_decoding(trainer, *, batch: int, prompt_length: int, max_length: int) -> Decoding:
    """Compiles `trainer.module`'s prefill and one step for `batch` rows on its mesh."""
    module = trainer.module
    fmt = model_format.of(module)
    model = incremental.for_model(type(module), module.config, max_length)
    params = trainer.abstract_state_with_shardings().params
    rows = trainer.batch_sharding
    ids = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rows)  # noqa: E731
    encoded = prompt_length if fmt.encoder_decoder else None
    # An encoder-decoder encodes the prompt and starts its decoder from one token.
    decoder_prompt = 1 if fmt.encoder_decoder else prompt_length
    inputs = (ids(batch, decoder_prompt), ids(batch))
    if fmt.encoder_decoder:
        inputs += (ids(batch, prompt_length), ids(batch))

    def prefill(decode_params, prompt, lengths, encoder_inputs=None, encoder_lengths=None):
        cache = model.init_cache(batch, encoded)
        return model.prefill(decode_params, cache, prompt, lengths, encoder_inputs,
                             encoder_lengths)

    with trainer.context():
        prepare = jax.jit(lambda p: incremental.prepare(module, p).params)
        decode_params = _abstract(jax.eval_shape(prepare, params),
                                  compile_described(prepare.lower(params)).output_shardings)
        _, cache, extra = jax.eval_shape(prefill, decode_params, *inputs)
        cache, extra = _by_rows((cache, extra), batch, rows)
        weights, held = sharded_bytes(decode_params), sharded_bytes(cache)
        return Decoding(
            batch, prompt_length, max_length, weights, held,
            Program.compile(jax.jit(prefill).lower(decode_params, *inputs), weights),
            Program.compile(jax.jit(model.step, donate_argnums=1).lower(
                decode_params, cache, ids(batch), ids(batch), extra), weights + held))


def _by_rows(tree, batch: int, rows):
    """Cache and encoder outputs split by their leading batch axis, as the rows are."""
    replicated = jax.sharding.NamedSharding(rows.mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=rows if x.shape[:1] == (batch,) else replicated), tree)


def summary(decoding: Decoding, chip: tpu_topology.Chip) -> str:
    """The printout of `compile --decode`."""
    lines = [f"decoding   {decoding.batch} rows, prompt {decoding.prompt_length} tokens, "
             f"cache {decoding.max_length} slots"]
    for name, program in (("prefill", decoding.prefill), ("step", decoding.step)):
        note = (f"params {gib(decoding.params_bytes)}"
                + (f", cache {gib(decoding.cache_bytes)}" if name == "step" else ""))
        lines += [f"{name}:", *memory_lines(program, chip, note)]
        if program.out_of_memory is None:
            seconds = max(program.xla_flops / chip.peak_flops,
                          program.xla_bytes / chip.hbm_bandwidth)
            lines.append(f"  roofline time  {seconds * 1e3:.3f} ms ({program.xla_flops:.4g} "
                         f"FLOPs, {program.xla_bytes:.4g} HBM bytes per device)")
        lines.append(f"  {verdict(program, chip)}")
    return "\n".join(lines)

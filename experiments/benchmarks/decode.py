"""Greedy decoding throughput on CPU: t5x_lite `decoding.decode` beside transformers `generate()`.

What is measured
  * Models, random weights, float32: `decoder` = DecoderLM with gin_configs/models/decoder_50m.gin
    dims (8 layers, d=512, 8x64 heads, SwiGLU 2048, tied 32,128 vocab, 0.02 embedding init);
    `t5` = EncoderDecoder with gin_configs/models/t5_1_1_small.gin dims (8+8 layers, d=512,
    6x64 heads, gated-GELU 1024), activations float32 instead of the gin's bfloat16.
  * The transformers side has the SAME weights: our params go through `interop.export_hf`
    into a temporary directory, loaded with `from_pretrained` (LlamaForCausalLM /
    T5ForConditionalGeneration), torch CPU, `torch.set_num_threads(os.cpu_count())`,
    `torch.inference_mode()`, `generate(do_sample=False, num_beams=1, max_new_tokens=N,
    min_new_tokens=N)`.
  * Inputs: `--batch` rows of `--prompt_len` random ids in [2, vocab) (decoder prompt, or T5
    encoder input; the T5 decoder starts from id 0). t5x_lite runs with `stop_at_eos=False` (an id
    the model cannot produce), transformers with `min_new_tokens`, so both produce all
    `--new_tokens` tokens (checked).
  * t5x_lite decodes with `decoding.prepare_params` applied once beforehand (what `t5x-lite
    infer` does: the weights go into decoding's layout once per loaded model, as
    `from_pretrained` is once per model on the other side); the conversion is timed apart.
  * Timing: one warm-up call each (for JAX it compiles: reported as "first call"), then
    `--rounds` rounds, each timing t5x_lite and transformers back to back (full length, then
    1 new token), so both sides meet the same machine: this VM's speed drifts by ~10% from
    minute to minute. Reported: medians over rounds; tokens/s = new_tokens x batch / median.
    The 1-token calls give the prefill time; (full - prefill) / (new_tokens - 1) is a step.
  * Bandwidth: decoding a batch of 8 streams every weight of the decoding path and the
    whole key/value cache through the cores at each step, so the roofline is memory, not
    FLOPs. Per step we report those bytes / step time, and the DRAM bandwidth this machine
    reaches (a jitted sum over 400 MB, measured in the same run).
  * Agreement: per row, how many leading generated tokens are identical on both sides.
  * int8 (`decode(..., quantize='int8')`, models/quantization.py): the same decode with int8
    weights, timed in the same rounds. Its greedy tokens are compared with float32's free
    running (leading equal positions, % equal) and teacher-forced: each side's argmax at every
    generated position given float32's own tokens as the prefix (one prefill over the whole
    sequence per side), which counts the positions where quantization changes the choice
    without the divergence that follows a first difference.

Run (on a quiet machine; the figures mean nothing when another job is computing):
    .venv/bin/python experiments/benchmarks/decode.py --batch 8 --prompt_len 128 \
        --new_tokens 128 --models decoder,t5 --rounds 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import summary
from t5x_lite import checkpoints, decoding
from t5x_lite.interop import convert
from t5x_lite.models import decoder, encoder_decoder, incremental, model_format

VOCAB = 32128
MODELS = {
    # gin_configs/models/decoder_50m.gin
    "decoder": lambda: decoder.DecoderLM(decoder.DecoderConfig(
        vocab_size=VOCAB, embed_dim=512, num_layers=8, num_heads=8, head_dim=64, mlp_dim=2048,
        tie_embeddings=True, embedding_init_stddev=0.02, dtype="float32", scan_layers=True)),
    # gin_configs/models/t5_1_1_small.gin, float32 activations
    "t5": lambda: encoder_decoder.EncoderDecoder(encoder_decoder.EncoderDecoderConfig(
        vocab_size=VOCAB, embed_dim=512, num_encoder_layers=8, num_decoder_layers=8,
        num_heads=6, head_dim=64, mlp_dim=1024, mlp_activations=("gelu", "linear"),
        tie_embeddings=False, dtype="float32", param_dtype="float32", scan_layers=True)),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--models", default="decoder,t5")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after a warm-up")
    parser.add_argument("--summary", default=None,
                        help="directory for the figures `summary.py` tabulates (make bench)")
    return parser.parse_args()


def seconds(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def dram_bandwidth() -> float:
    """Bytes/s of a jitted float32 sum over 400 MB (best of 5), both cores."""
    x = jnp.ones((100_000_000,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    best = min(seconds(lambda: total(x).block_until_ready())[0] for _ in range(5))
    return x.nbytes / best


def bytes_per_step(module, params, batch: int, prompt_length: int, new_tokens: int,
                   encoded_length: int) -> float:
    """Weights a decode step multiplies with (T5: the decoder stack and output layer, not the
    encoder; the input embedding is a gather of a few rows) plus the key/value cache it
    attends over, averaged over the steps: the cache grows through `decoding.cache_lengths`.
    `prompt_length` is the padded decoder prompt (T5: the start id, padded)."""
    weights = params if not model_format.of(module).encoder_decoder else {
        k: v for k, v in params.items() if k in ("decoder", "lm_head")}
    model = incremental.for_model(type(module), module.config, prompt_length + new_tokens)
    cache_bytes, done = 0, 1
    for length in decoding.cache_lengths(prompt_length, model.max_length):
        last = min(new_tokens, length - prompt_length + 1)
        shapes = jax.eval_shape(lambda: model.at_length(length).init_cache(batch, encoded_length))
        cache_bytes += (last - done) * sum(x.size * x.dtype.itemsize
                                           for x in jax.tree.leaves(shapes))
        done = last
    return sum(x.nbytes for x in jax.tree.leaves(weights)) + cache_bytes / max(new_tokens - 1, 1)


def to_transformers(module, params, tmp: str):
    """The transformers model holding `params`, via the interop exporter."""
    import transformers

    ours, hf_dir = os.path.join(tmp, "ours"), os.path.join(tmp, "hf")
    checkpoints.save_params(os.path.join(ours, convert.PARAMS_DIR), params)
    convert.write_model_config(ours, module)
    convert.export_hf(ours, hf_dir)
    auto = (transformers.AutoModelForSeq2SeqLM if model_format.of(module).encoder_decoder
            else transformers.AutoModelForCausalLM)
    return auto.from_pretrained(hf_dir, dtype="float32").eval()


def bench(name: str, args) -> dict:
    import torch

    module = MODELS[name]()
    is_t5 = model_format.of(module).encoder_decoder
    rng = np.random.default_rng(0)
    inputs = rng.integers(2, VOCAB, (args.batch, args.prompt_len), dtype=np.int64)
    if not is_t5:  # both sides read the same rows: decode() prepends the start id itself
        inputs[:, 0] = model_format.of(module).start_id
    init_args = (jnp.zeros((1, 8), jnp.int32),) * (2 if is_t5 else 1)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0), *init_args)["params"])
    r = {"name": name, "params": sum(x.size for x in jax.tree.leaves(params))}
    jax.block_until_ready(decoding.prepare_params(module, params))  # compile the conversion
    r["prepare_s"] = min(seconds(lambda: jax.block_until_ready(
        decoding.prepare_params(module, params)))[0] for _ in range(3))
    prepared = decoding.prepare_params(module, params)
    quantized = decoding.prepare_params(module, params, "int8")
    bucket = decoding.LENGTH_BUCKET  # decode pads the decoder prompt to a multiple of it
    prompt_length = bucket if is_t5 else -(-args.prompt_len // bucket) * bucket
    r["bytes_per_step"] = bytes_per_step(module, params, args.batch, prompt_length,
                                         args.new_tokens, args.prompt_len)
    r["int8_bytes_per_step"] = bytes_per_step(module, quantized.params, args.batch,
                                              prompt_length, args.new_tokens, args.prompt_len)
    kwargs = (dict(encoder_inputs=inputs.tolist()) if is_t5
              else dict(prompts=inputs[:, 1:].tolist()))

    def ours(new_tokens, weights=prepared):
        return lambda: decoding.decode(module, weights, max_new_tokens=new_tokens,
                                       stop_at_eos=False, **kwargs)["tokens"][:, 0]

    with tempfile.TemporaryDirectory() as tmp:
        hf_model = to_transformers(module, params, tmp)
    r["hf_class"] = type(hf_model).__name__

    def theirs(new_tokens):
        ids = torch.from_numpy(inputs)
        skip = 1 if is_t5 else args.prompt_len  # T5 output starts with decoder_start_token_id

        def run():
            with torch.inference_mode():
                out = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        do_sample=False, num_beams=1, max_new_tokens=new_tokens,
                                        min_new_tokens=new_tokens)
            return out[:, skip:].numpy()
        return run

    n = args.new_tokens
    calls = {("ours", n): ours(n), ("ours", 1): ours(1), ("int8", n): ours(n, quantized),
             ("int8", 1): ours(1, quantized), ("hf", n): theirs(n), ("hf", 1): theirs(1)}
    times = {key: [] for key in calls}
    for key, call in calls.items():  # warm-up (and, for JAX, compilation)
        r[f"{key[0]}_first{key[1]}"], out = seconds(call)
        if key[1] == n:
            r[f"{key[0]}_tokens"] = out
    for _ in range(args.rounds):
        for key, call in calls.items():
            times[key].append(seconds(call)[0])
    for side in ("ours", "int8", "hf"):
        r[f"{side}_runs"] = times[(side, n)]
        r[f"{side}_s"] = statistics.median(times[(side, n)])
        r[f"{side}_prefill_s"] = statistics.median(times[(side, 1)])
    r["round_ratios"] = [h / o for o, h in zip(times[("ours", n)], times[("hf", n)])]
    r["int8_round_ratios"] = [h / o for o, h in zip(times[("int8", n)], times[("hf", n)])]
    r["teacher_forced"] = teacher_forced_agreement(module, prepared, quantized, inputs,
                                                   r["ours_tokens"])
    return r


def teacher_forced_argmax(module, weights, inputs: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Argmax after every generated position's prefix (float32's tokens), one prefill pass."""
    fmt = model_format.of(module)
    batch, n = tokens.shape
    if fmt.encoder_decoder:
        sequence = np.concatenate([np.full((batch, 1), fmt.start_id), tokens[:, :-1]], axis=1)
        encoder = dict(encoder_inputs=jnp.asarray(inputs),
                       encoder_lengths=jnp.full((batch,), inputs.shape[1]))
    else:  # inputs[:, 0] is already the start id
        sequence, encoder = np.concatenate([inputs, tokens[:, :-1]], axis=1), {}
    model = incremental.for_model(type(module), module.config, sequence.shape[1])
    cache = model.init_cache(batch, inputs.shape[1] if fmt.encoder_decoder else None)
    at = jnp.arange(sequence.shape[1] - n, sequence.shape[1])
    if fmt.encoder_decoder:
        encoded = model.prefill_module.apply(
            {"params": weights.params}, encoder["encoder_inputs"],
            jnp.ones_like(encoder["encoder_inputs"]), method=model.prefill_module.encode)
        logits, _ = model.prefill_module.apply(
            {"params": weights.params, "cache": cache}, encoded, jnp.asarray(sequence),
            jnp.ones_like(encoder["encoder_inputs"]), None,
            jnp.broadcast_to(jnp.arange(sequence.shape[1]), sequence.shape),
            method=model.prefill_module.decoder_logits, mutable=["cache"])
        logits = logits[:, at]
    else:
        logits, _ = model.prefill_module.apply(
            {"params": weights.params, "cache": cache}, jnp.asarray(sequence), None,
            jnp.broadcast_to(jnp.arange(sequence.shape[1]), sequence.shape), None,
            logits_at=jnp.broadcast_to(at, (batch, n)), mutable=["cache"])
    return np.asarray(jnp.argmax(logits, axis=-1))


def teacher_forced_agreement(module, prepared, quantized, inputs, tokens) -> float:
    float_choice = teacher_forced_argmax(module, prepared, inputs, tokens)
    int8_choice = teacher_forced_argmax(module, quantized, inputs, tokens)
    return float((float_choice == int8_choice).mean())


def leading_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: the number of leading positions where the two token rows are equal."""
    differ = a != b
    return np.where(differ.any(axis=1), differ.argmax(axis=1), a.shape[1])


def summary_row(r: dict, args) -> dict:
    tokens = args.new_tokens * args.batch
    ours, int8, theirs = (tokens / r[f"{side}_s"] for side in ("ours", "int8", "hf"))
    return {"unit": "decode tokens/s", "ours": ours, "ours_int8": int8, "theirs": theirs,
            "ratio": ours / theirs, "ratio_int8": int8 / theirs,
            "agreement": f"{r['teacher_forced']:.1%} teacher-forced"}


def report(r: dict, args, bandwidth: float) -> None:
    n, b = args.new_tokens, args.batch
    ours_tps, hf_tps = n * b / r["ours_s"], n * b / r["hf_s"]
    print(f"\n== {r['name']}: {r['params']:,} parameters; transformers {r['hf_class']}")
    for label, key in (("t5x_lite", "ours"), ("t5x_lite int8", "int8"), ("transformers", "hf")):
        tokens = r[f"{key}_tokens"]
        step = (r[f"{key}_s"] - r[f"{key}_prefill_s"]) / max(n - 1, 1)
        runs = ", ".join(f"{t:.2f}" for t in r[f"{key}_runs"])
        streamed = r.get(f"{key}_bytes_per_step", r["bytes_per_step"]) / step / 1e9
        print(f"{label:13s} first call {r[f'{key}_first{n}']:5.2f} s | median {r[f'{key}_s']:5.2f} s"
              f" (runs {runs}) | {n * b / r[f'{key}_s']:6.1f} tokens/s | prefill+1 token "
              f"{r[f'{key}_prefill_s']:.3f} s, then {step * 1e3:.1f} ms/step = {streamed:.1f} GB/s"
              f" of weights+cache ({streamed * 1e9 / bandwidth:.0%} of DRAM) | output "
              f"{tokens.shape}, EOS-free {bool((tokens != 1).all())}")
    print(f"t5x_lite: prepare_params {r['prepare_s'] * 1e3:.0f} ms (once per model); compile "
          f"{r[f'ours_first{n}'] - r['ours_s']:.2f} s (+{r['ours_first1'] - r['ours_prefill_s']:.2f}"
          f" s for the 1-token program); {r['bytes_per_step'] / 1e6:.0f} MB streamed per step "
          f"on average ({r['int8_bytes_per_step'] / 1e6:.0f} MB with int8 weights)")
    ratios = ", ".join(f"{x:.2f}" for x in r["round_ratios"])
    print(f"ratio t5x_lite / transformers tokens/s: {ours_tps / hf_tps:.2f}x (per round: {ratios};"
          f" target >= 3x: {'met' if ours_tps >= 3 * hf_tps else 'NOT met'})")
    int8_tps = n * b / r["int8_s"]
    ratios = ", ".join(f"{x:.2f}" for x in r["int8_round_ratios"])
    print(f"ratio t5x_lite int8 / transformers tokens/s: {int8_tps / hf_tps:.2f}x (per round: "
          f"{ratios}; target >= 3x: {'met' if int8_tps >= 3 * hf_tps else 'NOT met'})")
    agree = leading_agreement(r["ours_tokens"], r["int8_tokens"])
    print(f"int8 vs float32 greedy: teacher-forced {r['teacher_forced']:.1%} of positions choose "
          f"the same token; free running {(r['ours_tokens'] == r['int8_tokens']).mean():.1%} "
          f"equal, leading equal positions per row {agree.tolist()}")
    agree = leading_agreement(r["ours_tokens"], r["hf_tokens"])
    same = (r["ours_tokens"] == r["hf_tokens"]).mean()
    print(f"greedy agreement: leading equal positions per row {agree.tolist()} of {n} "
          f"(min {agree.min()}); {same:.1%} of all positions equal")
    print(f"  row 0 t5x_lite     {r['ours_tokens'][0, :8].tolist()} ... "
          f"({len(set(r['ours_tokens'][0].tolist()))} distinct tokens in the row)")
    print(f"  row 0 transformers {r['hf_tokens'][0, :8].tolist()}")


def main():
    args = parse_args()
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}; "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}")
    bandwidth = dram_bandwidth()
    print(f"greedy, float32, batch {args.batch}, prompt/encoder length {args.prompt_len}, "
          f"{args.new_tokens} new tokens, medians of {args.rounds} interleaved rounds; "
          f"DRAM bandwidth (jitted sum) {bandwidth / 1e9:.1f} GB/s")
    rows = {}
    for name in args.models.split(","):
        result = bench(name, args)
        report(result, args, bandwidth)
        rows[f"greedy decode, {name}, batch {args.batch}, {args.prompt_len}+{args.new_tokens}"] = (
            summary_row(result, args))
    summary.write(args.summary, "decode", rows)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

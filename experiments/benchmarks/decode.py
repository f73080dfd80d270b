"""Greedy decoding throughput on CPU: t5x_lite `decoding.decode` beside transformers `generate()`.

What is measured
  * Models, random weights, float32: `decoder` = DecoderLM with gin_configs/models/decoder_50m.gin
    dims (8 layers, d=512, 8x64 heads, SwiGLU 2048, tied 32,128 vocab); `t5` = EncoderDecoder
    with gin_configs/models/t5_1_1_small.gin dims (8+8 layers, d=512, 6x64 heads, gated-GELU
    1024), activations float32 instead of the gin's bfloat16.
  * The transformers side has the SAME weights: our params go through `interop.export_hf`
    into a temporary directory, loaded with `from_pretrained` (LlamaForCausalLM /
    T5ForConditionalGeneration), torch CPU, `torch.set_num_threads(os.cpu_count())`,
    `torch.inference_mode()`, `generate(do_sample=False, num_beams=1, max_new_tokens=N,
    min_new_tokens=N)`.
  * Inputs: `--batch` rows of `--prompt_len` random ids in [2, vocab) (decoder prompt, or T5
    encoder input; the T5 decoder starts from id 0). t5x_lite runs with `eos_id=-1` (an id
    the model cannot produce), transformers with `min_new_tokens`, so both produce all
    `--new_tokens` tokens (checked).
  * Timing: one warm-up call each (for JAX it compiles: reported as "first call"), then the
    median of `--runs` timed calls of the whole user-facing call (host->device, prefill,
    decode loop, result back as numpy). tokens/s = new_tokens x batch / median seconds.
  * Breakdown: the same calls with 1 new token (prefill + first token; for t5x_lite a
    separate compile) give the prefill time; (full - prefill) / (new_tokens - 1) is the
    per-step time.
  * Agreement: per row, how many leading generated tokens are identical on both sides.

Run (on a quiet machine; the figures mean nothing when another job is computing):
    .venv/bin/python experiments/benchmarks/decode.py --batch 8 --prompt_len 128 \
        --new_tokens 128 --models decoder,t5 --runs 2
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

from t5x_lite import checkpoints, decoding
from t5x_lite.interop import convert
from t5x_lite.models import decoder, encoder_decoder

VOCAB = 32128
MODELS = {
    # gin_configs/models/decoder_50m.gin
    "decoder": lambda: decoder.DecoderLM(decoder.DecoderConfig(
        vocab_size=VOCAB, embed_dim=512, num_layers=8, num_heads=8, head_dim=64, mlp_dim=2048,
        tie_embeddings=True, dtype="float32", scan_layers=True)),
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
    parser.add_argument("--runs", type=int, default=2, help="timed runs after one warm-up")
    return parser.parse_args()


def timed(fn, runs: int):
    """(seconds of the first call, seconds of each of `runs` further calls, last result)."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return first, times, out


def to_transformers(module, params, tmp: str):
    """The transformers model holding `params`, via the interop exporter."""
    import transformers

    ours, hf_dir = os.path.join(tmp, "ours"), os.path.join(tmp, "hf")
    checkpoints.save_params(os.path.join(ours, convert.PARAMS_DIR), params)
    convert.write_model_config(ours, module)
    convert.export_hf(ours, hf_dir)
    auto = (transformers.AutoModelForSeq2SeqLM if hasattr(module, "encode")
            else transformers.AutoModelForCausalLM)
    return auto.from_pretrained(hf_dir, dtype="float32").eval()


def bench(name: str, args) -> dict:
    import torch

    module = MODELS[name]()
    is_t5 = hasattr(module, "encode")
    rng = np.random.default_rng(0)
    inputs = rng.integers(2, VOCAB, (args.batch, args.prompt_len), dtype=np.int64)
    init_args = (jnp.zeros((1, 8), jnp.int32),) * (2 if is_t5 else 1)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0), *init_args)["params"])
    n_params = sum(x.size for x in jax.tree.leaves(params))

    def ours(new_tokens):
        kwargs = dict(encoder_inputs=inputs.tolist()) if is_t5 else dict(prompts=inputs.tolist())
        return lambda: decoding.decode(module, params, max_new_tokens=new_tokens, eos_id=-1,
                                       **kwargs)["tokens"][:, 0]

    with tempfile.TemporaryDirectory() as tmp:
        hf_model = to_transformers(module, params, tmp)

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
    r = {"name": name, "params": n_params}
    r["ours_first"], r["ours_runs"], r["ours_tokens"] = timed(ours(n), args.runs)
    r["ours_first1"], r["ours_prefill_runs"], _ = timed(ours(1), args.runs)
    r["hf_first"], r["hf_runs"], r["hf_tokens"] = timed(theirs(n), args.runs)
    _, r["hf_prefill_runs"], _ = timed(theirs(1), args.runs)
    for key in ("ours", "hf"):
        r[f"{key}_s"] = statistics.median(r[f"{key}_runs"])
        r[f"{key}_prefill_s"] = statistics.median(r[f"{key}_prefill_runs"])
    r["hf_class"] = type(hf_model).__name__
    return r


def leading_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: the number of leading positions where the two token rows are equal."""
    differ = a != b
    return np.where(differ.any(axis=1), differ.argmax(axis=1), a.shape[1])


def report(r: dict, args) -> None:
    n, b = args.new_tokens, args.batch
    ours_tps, hf_tps = n * b / r["ours_s"], n * b / r["hf_s"]
    print(f"\n== {r['name']}: {r['params']:,} parameters; transformers {r['hf_class']}")
    for label, key in (("t5x_lite", "ours"), ("transformers", "hf")):
        tokens = r[f"{key}_tokens"]
        step = (r[f"{key}_s"] - r[f"{key}_prefill_s"]) / max(n - 1, 1)
        runs = ", ".join(f"{t:.2f}" for t in r[f"{key}_runs"])
        print(f"{label:13s} first call {r[f'{key}_first']:5.2f} s | median {r[f'{key}_s']:5.2f} s"
              f" (runs {runs}) | {n * b / r[f'{key}_s']:6.1f} tokens/s | prefill+1 token "
              f"{r[f'{key}_prefill_s']:.3f} s, then {step * 1e3:.1f} ms/step | output "
              f"{tokens.shape}, EOS-free {bool((tokens != 1).all())}")
    compile_s = r["ours_first"] - r["ours_s"]
    print(f"t5x_lite compile (first call - median): {compile_s:.2f} s "
          f"(+{r['ours_first1'] - r['ours_prefill_s']:.2f} s for the 1-token variant)")
    print(f"ratio t5x_lite / transformers tokens/s: {ours_tps / hf_tps:.2f}x "
          f"(target >= 3x: {'met' if ours_tps >= 3 * hf_tps else 'NOT met'})")
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
    print(f"greedy, float32, batch {args.batch}, prompt/encoder length {args.prompt_len}, "
          f"{args.new_tokens} new tokens, median of {args.runs} runs after a warm-up")
    for name in args.models.split(","):
        report(bench(name, args), args)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Training-step throughput and MFU of a ~1B LLaMA-style decoder on an accelerator (GPU/TPU).

What is measured
  * The real jitted `Trainer.train_step` (forward, chunked cross entropy, backward, AdamW) of
    the model in gin_configs/models/llama_1b.gin (16 layers, d=2048, 32 query / 8 KV heads of
    64, SwiGLU 8192, RoPE, RMSNorm, 32,000-token untied embeddings; bfloat16 activations and
    float32 parameters and optimizer state, remat 'dots_with_no_batch_dims'), for fully packed
    rows of random token ids, sequence 2,048, `--batch_per_device` rows per device, on a mesh
    of every local device (data parallel by default; `--mesh` to change).
  * Model FLOPs per step (6·N·tokens + attention, PaLM appendix B; `metrics.flops_per_step`),
    tokens/s, and MFU against the chips' data-sheet dense bf16 peak
    (`metrics.KNOWN_PEAK_FLOPS`, by `device_kind`; `--peak_flops_per_device` otherwise).
  * One step compiles and warms up; `--steps` further steps are timed one by one with
    `jax.block_until_ready`; the median is reported.

Run on the accelerator host (CI never does; no test needs a GPU):
    python experiments/benchmarks/gpu_train.py [--batch_per_device 4] [--steps 10]
On a CPU it runs too, for a smoke test of the script only (`--num_layers 2 --seq_len 128`):
its MFU there is against the measured float32 matmul peak and means little for bf16.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import time_steps  # noqa: E402  (the shared timing loop)

from t5x_lite import config as config_lib  # noqa: E402
from t5x_lite import metrics, optimizers, partitioning, trainer as trainer_lib  # noqa: E402
from t5x_lite.data import feature_converters, pipeline  # noqa: E402
from t5x_lite.models import model_format  # noqa: E402

import numpy as np  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_gin", default="models/llama_1b.gin")
    parser.add_argument("--batch_per_device", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--mesh", default="-1,1,1", help="data,fsdp,model")
    parser.add_argument("--remat", default=None, help="override the gin file's remat_policy")
    parser.add_argument("--num_layers", type=int, default=None, help="override (smoke tests)")
    parser.add_argument("--peak_flops_per_device", type=float, default=None)
    return parser.parse_args()


def load_model(args):
    bindings = []
    if args.remat:
        bindings.append(f"decoder.DecoderConfig.remat_policy = '{args.remat}'")
    if args.num_layers:
        bindings.append(f"decoder.DecoderConfig.num_layers = {args.num_layers}")
    config_lib.GinConfig([args.model_gin], bindings)
    return config_lib.macro_value("MODEL").scoped_configurable_fn()


def random_rows(batch_size: int, seq_len: int, vocab_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (batch_size, seq_len)
    return {
        "decoder_input_tokens": rng.integers(0, vocab_size, shape, dtype=np.int32),
        "decoder_target_tokens": rng.integers(0, vocab_size, shape, dtype=np.int32),
        "decoder_segment_ids": np.ones(shape, np.int32),
        "decoder_positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), shape).copy(),
        "decoder_loss_weights": np.ones(shape, np.float32),
    }


def main():
    args = parse_args()
    model = load_model(args)
    cfg = model.config
    mesh = partitioning.make_mesh(tuple(int(x) for x in args.mesh.split(",")))
    batch_size = args.batch_per_device * jax.device_count()
    schedule = optimizers.constant(3e-4)
    trainer = trainer_lib.Trainer(
        model, optimizers.adamw(schedule), schedule, mesh, partitioning.DEFAULT_RULES,
        batch_shapes=feature_converters.batch_shapes(
            model_format.of(model), {"targets": args.seq_len}, batch_size))
    state = trainer.create_state(seed=0)
    batch = pipeline.global_batch(random_rows(batch_size, args.seq_len, cfg.vocab_size),
                                  trainer.batch_sharding)
    tokens = batch_size * args.seq_len
    flops = metrics.model_flops_per_step(model, state.params, {"targets": args.seq_len},
                                         batch_size)
    peak, source = metrics.peak_flops_total(args.peak_flops_per_device)
    holder = {"state": state}

    def step():  # the state is donated: keep only the newest
        holder["state"], out = trainer.train_step(holder["state"], batch)
        jax.block_until_ready((holder["state"], out))

    first, median = time_steps(step, args.steps)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; mesh "
          f"{dict(mesh.shape)}; {metrics.count_params(state.params):,} parameters; "
          f"dtype {cfg.dtype}; remat {cfg.remat_policy}")
    print(f"batch {batch_size} x {args.seq_len} ({tokens:,} tokens/step); first step "
          f"(compile) {first:.1f} s; median step {median * 1e3:.1f} ms over {args.steps}")
    print(f"tokens/s {tokens / median:,.0f}; model TFLOP/s {flops / median / 1e12:.1f}; "
          f"peak {peak / 1e12:.1f} TFLOP/s ({source}); MFU {flops / median / peak:.1%}")


if __name__ == "__main__":
    main()

"""Training-step throughput and MFU on CPU: the 50M-parameter decoder beside transformers'
`LlamaForCausalLM`, or (`--model t5`) T5 v1.1-small dimensions beside
`T5ForConditionalGeneration`, same dimensions on both sides.

What is measured
  * t5x_lite: the real jitted `Trainer.train_step` (forward, cross entropy, backward, global-norm
    clipping, AdamW, metrics) of `DecoderLM` configured as gin_configs/models/decoder_50m.gin
    (8 layers, d=512, 8 heads x 64, SwiGLU 2048, tied 32,128-token embeddings with 0.02 init,
    RoPE, RMSNorm), on a (1, 1, 1) mesh of one CPU device, for a fully packed batch of random
    token ids (segment ids 1, positions 0..T-1, loss weights 1). One step compiles and warms up, then
    `--steps` steps are timed one by one with `jax.block_until_ready`; the median is reported.
  * `--model t5`: `EncoderDecoder` with gin_configs/models/t5_1_1_small.gin's dimensions (8+8
    layers, d=512, 6 heads x 64, gated-GELU 1024, untied output layer, relative position
    buckets), float32 activations, batch 8 x (512 inputs, 114 targets) as in T5's span
    corruption; tokens/s counts both streams (8 x 626 per step).
  * Model FLOPs per step from `t5x_lite.metrics.model_flops_per_step` (6·N·tokens + attention,
    PaLM appendix B, per token stream for T5), tokens/s, achieved TFLOP/s, and MFU against the float32 matmul peak that
    `t5x_lite.metrics.measure_cpu_peak_flops()` measures in this same run.
  * transformers (if `torch` and `transformers` import): LlamaForCausalLM with identical
    dimensions, float32, SDPA attention, random init; step = forward with labels -> backward
    -> clip_grad_norm_(1.0) -> AdamW.step -> zero_grad, with the same AdamW hyperparameters
    (T5: T5ForConditionalGeneration, its `lm_head` untied as in T5 v1.1, labels = our targets).
    Same batch shape, same peak, same median-of-steps timing.
  * Memory: XLA's analysis of the compiled step (whole vs chunked loss), and for both sides the
    peak resident memory of a fresh process that builds the model and runs the steps.

Run (on a quiet machine: the figures are only meaningful when nothing else is computing):
    .venv/bin/python experiments/benchmarks/train_step.py
    .venv/bin/python experiments/benchmarks/train_step.py --model t5
    .venv/bin/python experiments/benchmarks/train_step.py --batch_size 8 --seq_len 512 \
        --steps 5 --remat none --dtype float32 [--skip_torch]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np

import summary
from t5x_lite import metrics, optimizers, partitioning, trainer as trainer_lib
from t5x_lite.data import feature_converters, pipeline
from t5x_lite.models import encoder_decoder, model_format
from t5x_lite.models.decoder import DecoderConfig, DecoderLM

# gin_configs/models/decoder_50m.gin (T5: t5_1_1_small.gin's dimensions)
VOCAB, EMBED, LAYERS, HEADS, HEAD_DIM, MLP = 32128, 512, 8, 8, 64, 2048
T5_HEADS, T5_MLP = 6, 1024
LEARNING_RATE = 3e-4


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--model", choices=("decoder", "t5"), default="decoder")
    parser.add_argument("--seq_len", type=int, default=512, help="decoder: tokens per row")
    parser.add_argument("--inputs_len", type=int, default=512, help="T5: encoder tokens")
    parser.add_argument("--targets_len", type=int, default=114, help="T5: decoder tokens")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--remat", default="none", help="t5x_lite remat_policy")
    parser.add_argument("--dtype", default="float32", help="t5x_lite activation dtype")
    parser.add_argument("--skip_torch", action="store_true", help="skip the transformers run")
    parser.add_argument("--loss_chunk_size", default="auto",
                        help="positions of logits per chunk of the loss ('auto': 256 for this "
                             "32,128-token vocabulary; 'none': whole)")
    parser.add_argument("--unrolled", action="store_true",
                        help="scan_layers=False (the gin's default is a scanned stack)")
    parser.add_argument("--summary", default=None,
                        help="directory for the figures `summary.py` tabulates (make bench)")
    return parser.parse_args()


def feature_lengths(args) -> dict[str, int]:
    if args.model == "t5":
        return {"inputs": args.inputs_len, "targets": args.targets_len}
    return {"targets": args.seq_len}


def make_batch(args, seed: int = 0) -> dict[str, np.ndarray]:
    """A fully packed batch of random ids in the model format's features (one segment per
    row, positions 0..L-1, every target weighted)."""
    rng = np.random.default_rng(seed)
    shapes = feature_converters.batch_shapes(model_format.of(make_model(args)),
                                             feature_lengths(args), args.batch_size)
    batch = {}
    for name, (shape, dtype) in shapes.items():
        if name.endswith("_tokens"):
            batch[name] = rng.integers(2, VOCAB, shape, dtype=np.int32)
        elif name.endswith("_positions"):
            batch[name] = np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy()
        else:  # segment ids, loss weights
            batch[name] = np.ones(shape, dtype)
    return batch


def tokens_per_step(args) -> int:
    return args.batch_size * sum(feature_lengths(args).values())


def time_steps(step, steps: int) -> tuple[float, float]:
    """(first call incl. compile, median of `steps` further calls), in seconds."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def chunk_setting(value: str):
    named = {"auto": "auto", "none": None}
    return named[value] if value in named else int(value)


def make_model(args):
    if args.model == "t5":
        return encoder_decoder.EncoderDecoder(encoder_decoder.EncoderDecoderConfig(
            vocab_size=VOCAB, embed_dim=EMBED, num_encoder_layers=LAYERS,
            num_decoder_layers=LAYERS, num_heads=T5_HEADS, head_dim=HEAD_DIM, mlp_dim=T5_MLP,
            mlp_activations=("gelu", "linear"), tie_embeddings=False, dtype=args.dtype,
            param_dtype="float32", scan_layers=not args.unrolled, remat_policy=args.remat))
    return DecoderLM(DecoderConfig(  # a plain causal LM: no prefix-LM feature
        vocab_size=VOCAB, embed_dim=EMBED, num_layers=LAYERS, num_heads=HEADS,
        head_dim=HEAD_DIM, mlp_dim=MLP, tie_embeddings=True, embedding_init_stddev=0.02,
        dtype=args.dtype, scan_layers=not args.unrolled, remat_policy=args.remat,
    ))


def make_trainer(args, loss_chunk_size):
    schedule = optimizers.constant(LEARNING_RATE)
    mesh = partitioning.make_mesh((1, 1, 1))
    model = make_model(args)
    return trainer_lib.Trainer(
        model, optimizers.adamw(schedule), schedule, mesh, partitioning.DEFAULT_RULES,
        batch_shapes=feature_converters.batch_shapes(
            model_format.of(model), feature_lengths(args), args.batch_size),
        loss_chunk_size=loss_chunk_size,
    )


def step_memory(args, batch_np) -> dict[str, dict[str, float]]:
    """XLA's memory analysis of the compiled train step (MiB), whole vs chunked loss: the
    arguments (state + batch), and the temporaries (activations, logits, gradients)."""
    report = {}
    for name, chunk in (("whole logits", None), ("chunked loss (256)", 256)):
        trainer = make_trainer(args, chunk)
        state = trainer.abstract_state_with_shardings()
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding)
                 for k, v in batch_np.items()}
        with trainer.context():
            analysis = trainer._train_step.lower(state, batch).compile().memory_analysis()
        report[name] = {"arguments": analysis.argument_size_in_bytes / 2**20,
                        "temporaries": analysis.temp_size_in_bytes / 2**20}
    return report


def _peak_rss_child(side: str, args, queue) -> None:
    batch_np = make_batch(args)
    if side == "t5x_lite":
        bench_t5x(args, batch_np)
    else:
        bench_torch(args, batch_np)
    queue.put(high_water_rss())


def high_water_rss() -> int:
    """This process's peak resident bytes (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    over from the parent through fork and exec, so a child would report the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_rss(side: str, args) -> float:
    """Peak resident memory (MiB) of a fresh process that builds `side`'s model and runs its
    steps: parameters, optimizer state, activations, gradients and the framework itself, the
    same measure for both sides (XLA's analysis above sees only its compiled step)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_peak_rss_child, args=(side, args, queue))
    child.start()
    peak = queue.get()
    child.join()
    return peak / 2**20


def bench_t5x(args, batch_np):
    trainer = make_trainer(args, chunk_setting(args.loss_chunk_size))
    state = trainer.create_state(seed=0)
    batch = pipeline.global_batch(batch_np, trainer.batch_sharding)
    params = metrics.count_params(state.params)
    flops = metrics.model_flops_per_step(trainer.module, state.params, feature_lengths(args),
                                         args.batch_size)
    holder = {"state": state}

    def step():  # the state is donated: keep only the newest
        holder["state"], out = trainer.train_step(holder["state"], batch)
        jax.block_until_ready((holder["state"], out))
        holder["metrics"] = out

    first, median = time_steps(step, args.steps)
    loss = float(holder["metrics"]["loss"])
    return params, flops, first, median, loss, trainer.loss.chunk_size


def bench_torch(args, batch_np):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    if args.model == "t5":  # T5 v1.1: gated GELU, untied output layer, no dropout here
        config = transformers.T5Config(
            vocab_size=VOCAB, d_model=EMBED, d_kv=HEAD_DIM, d_ff=T5_MLP, num_layers=LAYERS,
            num_decoder_layers=LAYERS, num_heads=T5_HEADS, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
            eos_token_id=1)
        model = transformers.T5ForConditionalGeneration(config)
        # transformers >= 5 always ties lm_head to the embedding (interop/hf_t5.py): untie it,
        # as T5 v1.1 and our model have it, so both sides hold the same 77.0M parameters.
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    else:
        config = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=EMBED, intermediate_size=MLP, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=HEAD_DIM,
            max_position_embeddings=args.seq_len, rms_norm_eps=1e-6, tie_word_embeddings=True,
            attn_implementation="sdpa",
        )
        model = transformers.LlamaForCausalLM(config)
    model = model.to(torch.float32).train()
    params = sum(p.numel() for p in model.parameters())  # tied weight counted once
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LEARNING_RATE, betas=(0.9, 0.95), eps=1e-8,
    )
    tokens = torch.from_numpy(batch_np["decoder_input_tokens"]).long()
    if args.model == "t5":
        inputs = dict(input_ids=torch.from_numpy(batch_np["encoder_input_tokens"]).long(),
                      labels=torch.from_numpy(batch_np["decoder_target_tokens"]).long())
    else:
        inputs = dict(input_ids=tokens, labels=tokens)
    holder = {}

    def step():
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        holder["loss"] = loss.item()

    first, median = time_steps(step, args.steps)
    return params, first, median, holder["loss"], torch.__version__, transformers.__version__


def main():
    args = parse_args()
    tokens = tokens_per_step(args)
    lengths = "/".join(str(n) for n in feature_lengths(args).values())
    name = "T5 (t5_1_1_small dims)" if args.model == "t5" else "decoder_50m"
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.device_count()} "
          f"device), {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{name}: batch {args.batch_size} x {lengths} = {tokens:,} tokens/step, "
          f"{args.steps} timed steps, remat={args.remat}, dtype={args.dtype}")
    batch_np = make_batch(args)

    params, flops, first, step_s, loss, chunk = bench_t5x(args, batch_np)
    peak = metrics.measure_cpu_peak_flops()
    print(f"\nmeasured CPU peak (2048^3 f32 matmul): {peak / 1e12:.4f} TFLOP/s")
    print(f"\n== t5x_lite {type(make_model(args)).__name__} ({name}), Trainer.train_step")
    print(f"parameters:            {params:,}")
    print(f"model FLOPs per step:  {flops / 1e12:.4f} TFLOP")
    print(f"compile + first step:  {first:.2f} s")
    print(f"median step time:      {step_s:.3f} s   (loss {loss:.3f})")
    print(f"tokens/s:              {tokens / step_s:,.0f}")
    print(f"achieved:              {flops / step_s / 1e12:.4f} TFLOP/s")
    print(f"MFU:                   {flops / step_s / peak:.1%}")
    print(f"loss chunk size:       {chunk or 'none (whole logits)'}")
    memory = step_memory(args, batch_np)
    for path, sizes in memory.items():
        print(f"step memory, {path + ':':<19} temporaries {sizes['temporaries']:,.0f} MiB, "
              f"arguments {sizes['arguments']:,.0f} MiB (XLA memory analysis)")
    ours_rss = peak_rss("t5x_lite", args)
    print(f"peak process memory:   {ours_rss:,.0f} MiB (RSS of a fresh process running the steps)")
    figures = {"unit": "train tokens/s", "ours": tokens / step_s,
               "mfu": f"{flops / step_s / peak:.1%}", "memory": f"{ours_rss:,.0f} MiB"}
    row = (f"train step, {name}, {args.batch_size}x{lengths} {args.dtype}"
           + (", unrolled" if args.unrolled else ""))

    if args.skip_torch:
        print("\n== transformers comparison skipped (--skip_torch)")
        summary.write(args.summary, f"train_step_{args.model}", {row: figures})
        return
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        print(f"\n== transformers comparison skipped ({error}); to enable it: "
              f".venv/bin/pip install torch==2.13.0 transformers")
        summary.write(args.summary, f"train_step_{args.model}", {row: figures})
        return
    t_params, t_first, t_step, t_loss, t_ver, tf_ver = bench_torch(args, batch_np)
    hf_class = "T5ForConditionalGeneration" if args.model == "t5" else "LlamaForCausalLM, sdpa"
    print(f"\n== transformers {tf_ver} {hf_class}, torch {t_ver}, float32")
    print(f"parameters:            {t_params:,}")
    print(f"first step:            {t_first:.2f} s")
    print(f"median step time:      {t_step:.3f} s   (loss {t_loss:.3f})")
    print(f"tokens/s:              {tokens / t_step:,.0f}")
    print(f"achieved:              {flops / t_step / 1e12:.4f} TFLOP/s (same model FLOPs)")
    print(f"MFU:                   {flops / t_step / peak:.1%}")
    torch_rss = peak_rss("transformers", args)
    print(f"peak process memory:   {torch_rss:,.0f} MiB (RSS of a fresh process running the steps)")
    print(f"\nt5x_lite / transformers throughput: {t_step / step_s:.2f}x")
    figures.update(theirs=tokens / t_step, ratio=t_step / step_s,
                   mfu=f"{figures['mfu']} ({flops / t_step / peak:.1%})",
                   memory=f"{figures['memory']} ({torch_rss:,.0f} MiB)")
    summary.write(args.summary, f"train_step_{args.model}", {row: figures})


if __name__ == "__main__":
    main()

"""Instruction-tuning input pipeline throughput beside the quickstart decoder's consumption rate.

The issue's target: the input pipeline's examples/s for the instruction mixture (template +
tokenize + pack) should be at least 20x what the quickstart decoder consumes in training.

What is measured
  * Mixture: `embedded_suite` (the offline instruction suite; FLAN's TFDS tasks need prepared
    data), examples-proportional at FLAN 2021's 3,000 cap (the registered rate), split 'train',
    in two format settings: (a) FLAN 2021's one format, `zero_shot_formats()` (zero-shot,
    options shown) and (b) Flan 2022's four formats mixed equally, `flan_2022_formats(shots=3)`
    (zero/3-shot x with/without options; exemplars from the train split, dropped from the end
    until the inputs fit 1,920 tokens). Vocabulary: `pipeline.load_vocabulary()` (the
    8,192-piece python_docs SentencePiece model + 100 sentinels, cached under ~/.cache/t5x_lite).
  * Pipeline ("packed"): `InstructionData(...).make_dataset(vocabulary, feature_lengths=
    {'targets': 256}, batch_size=8, model_format=ModelFormat(architecture='decoder'))`, the
    batches `train_loop.train` reads for gin_configs/quickstart/instruction_tune_decoder.gin:
    record -> preprocessor -> template/format (+ exemplars) -> tokenize (inputs + EOS, targets
    + EOS) -> fit to the row -> grain first-fit packing into 8 bins -> decoder features ->
    batches of 8 x 256. One process, grain's default read options (16 prefetch threads, which
    share the GIL; no grain multiprocessing). Each round builds a fresh iterator (seed = round),
    reads batches for `--warmup` seconds, then counts batches for `--seconds`. Examples = the
    distinct nonzero `decoder_segment_ids` of each row, summed; tokens = nonzero segment ids.
  * Raw ("examples"): `InstructionData.examples(vocabulary, eos_id)` through the same
    `to_iter_dataset()` (template + tokenize + mix, no fitting or packing), same timing;
    tokens = len(inputs) + len(targets) before any truncation.
  * Model: the quickstart decoder, `DecoderLM(DecoderConfig(...))` with
    gin_configs/models/decoder_tiny.gin's values (4 layers, d=256, 4 heads / 2 kv heads x 64,
    SwiGLU 768, 8,320-token untied embeddings, float32, scanned), the project's jitted
    `Trainer.train_step` with instruction_tune.gin's optimizer (AdamW b2=0.95, no weight decay,
    clip 1.0, warmup-cosine 1e-3) and z_loss 1e-4, mesh (1, 1, 1), on a real 8 x 256 batch from
    the pipeline. Per round `--steps` steps are timed one by one with `jax.block_until_ready`
    (after one compile/warm-up step before the first round); the round's figure is their median.
    The model consumes (examples per batch, measured from that format's pipeline) / step time.
  * Rounds interleave pipeline and model (this VM's speed drifts over minutes); every figure
    is the median over rounds; the ratio pipeline / model is also given per round (min-max).

Run (on a quiet machine: the figures are only meaningful when nothing else is computing):
    .venv/bin/python experiments/benchmarks/instruction_pipeline.py
    .venv/bin/python experiments/benchmarks/instruction_pipeline.py --rounds 5 --seconds 4 \
        --warmup 1 --raw_seconds 2 --steps 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np

import summary
from t5x_lite import metrics, optimizers, partitioning, trainer as trainer_lib
from t5x_lite.data import feature_converters, instruction_pipeline, pipeline
from t5x_lite.data.tasks import formats, mixtures
from t5x_lite.models import model_format
from t5x_lite.models.decoder import DecoderConfig, DecoderLM
from t5x_lite.models.model_format import ModelFormat

MIXTURE = "embedded_suite"
SEQUENCE_LENGTH, BATCH_SIZE = 256, 8  # quickstart/instruction_tune_decoder.gin, runs/instruction_tune.gin
TARGET = 20.0  # the target: pipeline >= 20x the model's need
FORMAT_SETTINGS = {
    "FLAN 2021 zero-shot": formats.zero_shot_formats(),
    "Flan 2022 (shots=3)": formats.flan_2022_formats(shots=3),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of batches read before each timed pipeline window")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="timed seconds of packed batches per format per round")
    parser.add_argument("--raw_seconds", type=float, default=2.0,
                        help="timed seconds of examples() per format per round (0: skip)")
    parser.add_argument("--steps", type=int, default=5, help="timed train steps per round")
    parser.add_argument("--summary", default=None,
                        help="directory for the figures `summary.py` tabulates (make bench)")
    return parser.parse_args()


def decoder_tiny() -> DecoderLM:
    """gin_configs/models/decoder_tiny.gin, written out."""
    return DecoderLM(DecoderConfig(
        vocab_size=8320, embed_dim=256, num_layers=4, num_heads=4, num_kv_heads=2,
        head_dim=64, mlp_dim=768, mlp_activations=("silu", "linear"), norm_type="rmsnorm",
        position_embedding="rope", tie_embeddings=False, dropout_rate=0.0, dtype="float32",
        param_dtype="float32", scan_layers=True, remat_policy="none",
    ))


def count_batch(batch) -> tuple[int, int]:
    """(examples, tokens) in a packed batch: distinct nonzero segment ids per row, summed."""
    segments = np.asarray(batch["decoder_segment_ids"])
    examples = sum(len(np.unique(row[row > 0])) for row in segments)
    return examples, int((segments > 0).sum())


def timed_window(iterator, count, warmup: float, seconds: float) -> tuple[int, int, int, float]:
    """Reads for `warmup` s, then for `seconds` s; (items, tokens, reads, elapsed s) of the
    timed window."""
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        next(iterator)
    items = tokens = reads = 0
    start = time.perf_counter()
    while True:
        n, t = count(next(iterator))
        items, tokens, reads = items + n, tokens + t, reads + 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return items, tokens, reads, elapsed


def bench_packed(data, vocabulary, fmt, seed, warmup, seconds):
    dataset, stats = data.make_dataset(
        vocabulary, feature_lengths={"targets": SEQUENCE_LENGTH}, batch_size=BATCH_SIZE,
        model_format=fmt, seed=seed)
    iterator = iter(dataset)
    try:
        examples, tokens, batches, elapsed = timed_window(iterator, count_batch, warmup, seconds)
    finally:
        iterator.close()
    return examples / elapsed, tokens / elapsed, examples, batches, stats.snapshot()


def bench_raw(data, vocabulary, fmt, seed, warmup, seconds):
    iterator = iter(data.examples(vocabulary, fmt.eos_id, seed=seed).to_iter_dataset())
    try:
        examples, tokens, _, elapsed = timed_window(
            iterator, lambda e: (1, len(e["inputs"]) + len(e["targets"])), warmup, seconds)
    finally:
        iterator.close()
    return examples / elapsed, tokens / elapsed


class ModelBench:
    """The quickstart decoder's jitted train step on one real pipeline batch."""

    def __init__(self, batch_np):
        model = decoder_tiny()
        self.fmt = model_format.of(model)
        schedule = optimizers.warmup_cosine(1e-3, warmup_steps=20, decay_steps=300,
                                            end_fraction=0.1)
        self.trainer = trainer_lib.Trainer(
            model, optimizers.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.0, clip_norm=1.0),
            schedule, partitioning.make_mesh((1, 1, 1)), partitioning.DEFAULT_RULES,
            batch_shapes=feature_converters.batch_shapes(self.fmt, {"targets": SEQUENCE_LENGTH},
                                                         BATCH_SIZE),
            z_loss=1e-4,
        )
        self.state = self.trainer.create_state(seed=0)
        self.batch = pipeline.global_batch(batch_np, self.trainer.batch_sharding)
        self.params = metrics.count_params(self.state.params)

    def step(self) -> float:
        start = time.perf_counter()
        self.state, out = self.trainer.train_step(self.state, self.batch)  # state donated
        jax.block_until_ready((self.state, out))
        return time.perf_counter() - start


def med(values):
    return statistics.median(values)


def main():
    args = parse_args()
    begin = time.perf_counter()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.device_count()} "
          f"device), {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at start")
    vocabulary = pipeline.load_vocabulary()
    fmt = ModelFormat(architecture="decoder")
    mixture = mixtures.get(MIXTURE)
    datas = {name: instruction_pipeline.InstructionData(mixture, split="train", formats=f)
             for name, f in FORMAT_SETTINGS.items()}
    print(f"mixture {MIXTURE}: {len(mixture.task_names())} tasks; rows {BATCH_SIZE} x "
          f"{SEQUENCE_LENGTH} (decoder: inputs + targets share the row); {args.rounds} rounds "
          f"of: pipeline {args.warmup:g} s warm-up + {args.seconds:g} s per format, examples() "
          f"{args.raw_seconds:g} s per format, model {args.steps} steps")

    # One real batch for the model (its step time does not depend on the contents).
    first_batch = next(iter(datas["FLAN 2021 zero-shot"].make_dataset(
        vocabulary, feature_lengths={"targets": SEQUENCE_LENGTH}, batch_size=BATCH_SIZE,
        model_format=fmt)[0]))
    model = ModelBench(first_batch)
    assert model.fmt == fmt, (model.fmt, fmt)
    start = time.perf_counter()
    model.step()
    compile_s = time.perf_counter() - start

    packed = {name: [] for name in datas}  # (examples/s, tokens/s, examples, batches)
    raw = {name: [] for name in datas}
    steps = []
    last_stats = {}
    for r in range(args.rounds):
        for name, data in datas.items():
            *result, last_stats[name] = bench_packed(
                data, vocabulary, fmt, seed=r, warmup=args.warmup, seconds=args.seconds)
            packed[name].append(tuple(result))
            if args.raw_seconds > 0:
                raw[name].append(bench_raw(data, vocabulary, fmt, seed=r,
                                           warmup=min(args.warmup, 0.5),
                                           seconds=args.raw_seconds))
        steps.append(med([model.step() for _ in range(args.steps)]))
        line = "  ".join(f"{name}: {packed[name][-1][0]:,.0f} ex/s" for name in datas)
        print(f"round {r + 1}: {line}  model step {steps[-1] * 1e3:.1f} ms", flush=True)

    step_s = med(steps)
    print(f"\n== model: quickstart decoder (decoder_tiny.gin, {model.params:,} parameters), "
          f"Trainer.train_step, batch {BATCH_SIZE} x {SEQUENCE_LENGTH}")
    print(f"compile + first step:  {compile_s:.2f} s")
    print(f"median step time:      {step_s * 1e3:.1f} ms  (rounds {min(steps) * 1e3:.1f}-"
          f"{max(steps) * 1e3:.1f} ms)")
    print(f"rows/s:                {BATCH_SIZE / step_s:,.1f}  (row tokens/s "
          f"{BATCH_SIZE * SEQUENCE_LENGTH / step_s:,.0f})")

    table = {}
    for name in datas:
        rows = packed[name]
        ex_s, tok_s = med([x[0] for x in rows]), med([x[1] for x in rows])
        # examples per batch over all timed batches of all rounds
        per_batch = sum(x[2] for x in rows) / sum(x[3] for x in rows)
        model_ex_s = per_batch / step_s
        ratios = [x[0] / (per_batch / s) for x, s in zip(rows, steps)]
        ratio = ex_s / model_ex_s
        stats = last_stats[name]
        print(f"\n== {name}: {dict((f.name, rate) for f, rate in FORMAT_SETTINGS[name])}")
        if raw[name]:
            raw_ex = med([x[0] for x in raw[name]])
            raw_tok = med([x[1] for x in raw[name]])
            print(f"examples() (template + tokenize): {raw_ex:,.0f} examples/s, "
                  f"{raw_tok:,.0f} tokens/s ({raw_tok / raw_ex:.1f} tokens/example)")
        print(f"packed batches:        {ex_s:,.0f} examples/s, {tok_s:,.0f} tokens/s "
              f"({ex_s / per_batch:.1f} batches/s; rounds "
              f"{min(x[0] for x in rows):,.0f}-{max(x[0] for x in rows):,.0f} examples/s)")
        print(f"examples per batch:    {per_batch:.1f}  (row fill "
              f"{tok_s / (ex_s / per_batch) / (BATCH_SIZE * SEQUENCE_LENGTH):.0%}; last round: "
              f"{stats['truncated']} of {stats['records']} records truncated to the row, "
              f"{stats['skipped_no_exemplar']} dropped for no exemplar)")
        print(f"model consumes:        {model_ex_s:,.1f} examples/s")
        met = ratio >= TARGET
        print(f"pipeline / model:      {ratio:.1f}x (rounds {min(ratios):.1f}-{max(ratios):.1f}x)"
              f"  -> target >= {TARGET:g}x {'MET' if met else 'NOT MET'}")
        table[f"instruction pipeline, {name}"] = {
            "unit": "examples/s", "ours": ex_s, "consumption": model_ex_s, "ratio": ratio}
    summary.write(args.summary, "instruction_pipeline", table)
    print(f"\nload average {os.getloadavg()[0]:.2f} at end; total {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()

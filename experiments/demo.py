"""`make demo`: the main job, end to end, on the embedded Python-docs corpus (CPU, minutes).

1. builds the corpus (TFDS, offline) and the SentencePiece vocabulary, and prints their size;
2. trains the quickstart decoder with the real CLI (`t5x-lite train`), showing losses;
3. trains a tiny T5 v1.1 with span corruption (showing one corrupted example first);
4. compares each final validation loss with the corpus's unigram entropy and points to the
   loss plots;
5. prints greedy and sampled continuations from both models with `t5x-lite infer`.

Extra arguments are passed to `t5x-lite train` (e.g. `--gin.TRAIN_STEPS=100`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RUNS = os.environ.get("DEMO_RUNS_DIR", "runs")
JOBS = [
    ("decoder LM (LLaMA-style, next-token prediction)", "quickstart/decoder_lm.gin", "decoder_lm"),
    ("encoder-decoder (T5 v1.1, span corruption)", "quickstart/t5_span_corruption.gin",
     "t5_span_corruption"),
]


def show_span_corruption(vocabulary, text: str, inputs_length: int = 128) -> None:
    """Prints one document as the T5 job sees it: corrupted inputs and the targets."""
    from t5x_lite.data import objectives, pipeline

    objective = pipeline.bind_vocabulary(objectives.SpanCorruption(), vocabulary)
    tokens = vocabulary.encode(text)[: objective.raw_length({"inputs": inputs_length})]
    example = objective(tokens, seed=0)
    print("   span corruption of a validation document (15% noise, mean span 3):")
    print(f"     inputs : {vocabulary.decode(example['inputs'])!r}")
    print(f"     targets: {vocabulary.decode(example['targets'])!r}")


PROMPTS = {
    "decoder_lm": ("quickstart/decoder_lm.gin", [
        "Return a new list containing", "The json module", "Raise ValueError if"]),
    "t5_span_corruption": ("quickstart/t5_span_corruption.gin", [
        "Return a <extra_id_0> containing all items from the iterable.",
        "The <extra_id_0> module provides functions for <extra_id_1> JSON documents."]),
}
STRATEGIES = [
    ("greedy", []),
    ("sampled (temperature 0.8, top-p 0.9)", ["--gin.decoding.Strategy.temperature=0.8",
                                            "--gin.decoding.Strategy.top_p=0.9"]),
]


def show_generations() -> None:
    """Greedy and sampled outputs of both trained models, through `t5x-lite infer`."""
    import json
    import tempfile

    for name, (gin_file, prompts) in PROMPTS.items():
        model_dir = os.path.join(RUNS, name)
        if not os.path.isdir(os.path.join(model_dir, "checkpoints")):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "prompts.jsonl")
            with open(source, "w") as f:
                f.writelines(json.dumps({"inputs": p}) + "\n" for p in prompts)
            print(f"== {name}: t5x-lite infer --gin_file={gin_file} --input=prompts.jsonl ...")
            for title, flags in STRATEGIES:
                target = os.path.join(tmp, "out.jsonl")
                command = [sys.executable, "-m", "t5x_lite.main", "infer",
                           f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'",
                           f"--input={source}", f"--output={target}",
                           "--gin.inference.infer.max_new_tokens=24", *flags]
                if subprocess.run(command, capture_output=True, text=True).returncode:
                    print(f"   ({title} decoding failed)")
                    continue
                print(f"   {title}:")
                with open(target) as f:
                    for line in map(json.loads, f):
                        print(f"     {line['inputs']!r} -> {line['outputs'][0]!r}")
        print()


def main(extra_args: list[str]) -> int:
    from t5x_lite import metrics
    from t5x_lite.data import pipeline

    started = time.time()
    train_data = pipeline.DatasetConfig(split="train")
    validation = pipeline.DatasetConfig(split="validation")
    print(f"== corpus: python_docs (offline, from this Python's docs) in {pipeline.default_data_dir()}")
    vocabulary = pipeline.load_vocabulary(train_data=train_data)
    train_source, valid_source = train_data.source(), validation.source()
    print(f"   {len(train_source):,} train / {len(valid_source):,} validation documents; "
          f"vocabulary {vocabulary.vocab_size:,} ids ({vocabulary.base_vocab_size:,} pieces + "
          f"{vocabulary.extra_ids} sentinels)")
    entropy = pipeline.unigram_entropy(vocabulary, validation.texts())
    print(f"   unigram entropy of the validation split: {entropy:.3f} nats/token")
    show_span_corruption(vocabulary, next(t for t in validation.texts() if len(t) > 400))
    print()

    for title, gin_file, name in JOBS:
        model_dir = os.path.join(RUNS, name)
        if os.path.isdir(model_dir):  # the demo's own output from an earlier run: start fresh
            shutil.rmtree(model_dir)
        print(f"== training: {title}\n   t5x-lite train --gin_file={gin_file} "
              f"--gin.MODEL_DIR=\"'{model_dir}'\" {' '.join(extra_args)}")
        command = [sys.executable, "-m", "t5x_lite.main", "train", f"--gin_file={gin_file}",
                   f"--gin.MODEL_DIR='{model_dir}'", *extra_args]
        result = subprocess.run(command)
        if result.returncode:
            return result.returncode
        records = metrics.read_metrics(model_dir)
        evals = [r for r in records if "eval/loss" in r]
        if evals:
            final = evals[-1]
            print(f"   validation loss {final['eval/loss']:.3f} nats/token (perplexity "
                  f"{final['eval/perplexity']:.1f}) at step {final['step']} vs unigram entropy "
                  f"{entropy:.3f}: {entropy - final['eval/loss']:.3f} nats below it")
        print(f"   loss plot: {os.path.join(model_dir, 'loss.png')}; metrics: "
              f"{os.path.join(model_dir, 'metrics.jsonl')}; operative config: "
              f"{os.path.join(model_dir, 'config.gin')}\n")
    show_generations()
    print(f"== demo finished in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

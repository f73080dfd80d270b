"""Encoder-only vs decoder-only vs encoder-decoder on one classification task, in one command
(`make architectures`).

The seeds' comparison of the three ways to build a transformer LM, at CPU scale: each
quickstart model is pretrained on python_docs with its own objective (BERT: masked LM;
decoder: next-token LM; T5: span corruption; `make demo`'s and quickstart/bert_mlm.gin's runs,
reused when their directories hold a finished checkpoint), then fine-tuned on the same task of
the embedded instruction suite for the same number of steps:
  - the encoder with a classifier head on the task's labels (`train_classifier`);
  - the decoder and T5 by instruction tuning on that task alone (`train`, MIXTURE = the task);
and all three are evaluated by `t5x-lite eval --tasks=TASK` on the same rendered dev/test
examples in every evaluation template: the encoder by its head's argmax, the decoder and T5 by
rank classification. The untuned decoder and T5 (zero-shot rank classification) are the
floor. Every run is a `t5x-lite` subprocess; a rerun skips what is done. Results:
OUT/TASK/results.json and OUT/TASK/results.md.

    python experiments/architectures/run.py [--task debate_party] [--steps 300]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

# name → (pretraining gin, its MODEL_DIR, objective, fine-tuning gin, fine-tuning command)
ARCHITECTURES = {
    "encoder (BERT)": ("quickstart/bert_mlm.gin", "runs/bert_mlm", "masked LM",
                       "quickstart/bert_classify.gin", "train_classifier"),
    "decoder (GPT)": ("quickstart/decoder_lm.gin", "runs/decoder_lm", "next-token LM",
                      "quickstart/instruction_tune_decoder.gin", "train"),
    "encoder-decoder (T5)": ("quickstart/t5_span_corruption.gin", "runs/t5_span_corruption",
                             "span corruption", "quickstart/instruction_tune_t5.gin", "train"),
}


def cli(*args: str, log: str) -> str:
    """Runs `t5x-lite ARGS`, its output appended to `log` and returned; stops on failure."""
    command = [sys.executable, "-m", "t5x_lite.main", *args]
    print("$", " ".join(command[2:]), flush=True)
    start = time.time()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(log, "a") as f:
        f.write(done.stdout)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}) after {time.time() - start:.0f} s; "
                         f"see {log}")
    print(f"  done in {time.time() - start:.0f} s", flush=True)
    return done.stdout


def run_architecture(name: str, args, log: str) -> dict:
    pretrain_gin, base_dir, objective, tune_gin, tune_command = ARCHITECTURES[name]
    cli("train", f"--gin_file={pretrain_gin}", f"--gin.MODEL_DIR='{base_dir}'", log=log)
    params = int(re.search(r"total_params: (\d+)",
                           cli("params", f"--gin_file={pretrain_gin}", log=log)).group(1))
    slug = name.split()[0]
    tuned_dir = os.path.join(args.out, args.task, slug)
    task_flag = (f"--gin.TASK='{args.task}'" if tune_command == "train_classifier"
                 else f"--gin.MIXTURE='{args.task}'")
    cli(tune_command, f"--gin_file={tune_gin}", f"--gin.MODEL_DIR='{tuned_dir}'",
        f"--gin.INIT_FROM='{base_dir}'", task_flag, f"--gin.TRAIN_STEPS={args.steps}",
        f"--gin.EVAL_EVERY={args.steps}", f"--gin.CHECKPOINT_EVERY={args.steps}", log=log)
    result = {"params": params, "objective": objective, "pretraining": base_dir,
              "tuned": evaluate(tune_gin, tuned_dir, args, log)}
    if tune_command == "train":  # the language models can also be asked zero-shot
        result["untuned"] = evaluate(tune_gin, base_dir, args, log,
                                     os.path.join(args.out, args.task, f"{slug}_untuned"))
    return result


def evaluate(tune_gin: str, model_dir: str, args, log: str, output_dir: str | None = None):
    output_dir = output_dir or os.path.join(model_dir, "task_eval")
    if not os.path.exists(os.path.join(output_dir, "results.json")):
        cli("eval", f"--gin_file={tune_gin}", f"--gin.MODEL_DIR='{model_dir}'",
            f"--tasks={args.task}", f"--output_dir={output_dir}",
            f"--gin.task_evaluation.run.max_examples={args.max_examples}", log=log)
    with open(os.path.join(output_dir, "results.json")) as f:
        return json.load(f)["tasks"][args.task]


def majority(task_name: str, max_examples: int) -> float:
    """Accuracy (%) of always answering the commonest label of the evaluated test examples."""
    from t5x_lite.data.tasks import task as task_lib

    task = task_lib.get(task_name)
    records, answers = task.records("test"), []
    for index in range(len(records)):
        example = task.example(records[index])
        if example is not None and len(answers) < max_examples:
            answers.append(example["answer"])
    return 100.0 * max(answers.count(a) for a in set(answers)) / len(answers)


def table(results: dict, args) -> str:
    lines = ["| architecture | parameters | pretraining objective | fine-tuning | test accuracy"
             " (mean ± std over templates) | best-dev template → test | chance | majority |",
             "|---|---|---|---|---|---|---|---|"]
    floor = majority(args.task, args.max_examples)
    for name, r in results.items():
        rows = [("classifier head" if "encoder (" in name else "instruction tuning",
                 r["tuned"])]
        if "untuned" in r:
            rows.append(("none (zero-shot)", r["untuned"]))
        for tuning, t in rows:
            lines.append(f"| {name} | {r['params'] / 1e6:.1f}M | {r['objective']} | {tuning} | "
                         f"{t['mean']:.1f} ± {t['std']:.1f} | #{t['best_dev_template']} → "
                         f"{t['best_dev_template_test']:.1f} | {t['chance']:.1f} | "
                         f"{floor:.1f} |")
    return (f"Task: {args.task}; {args.steps} fine-tuning steps; {args.max_examples} dev and "
            f"test examples, each in every evaluation template.\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="debate_party",
                        help="a classification task with one label set; debate_party's words "
                             "tell its classes apart (naive Bayes on them: 69%% vs a 40%% "
                             "majority), movie_review_sentiment's barely (67%% vs 61%%)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--max_examples", type=int, default=100,
                        help="per split (dev, test)")
    parser.add_argument("--out", default="runs/architectures")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "log.txt")
    results = {name: run_architecture(name, args, log) for name in ARCHITECTURES}
    out = os.path.join(args.out, args.task)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report = table(results, args)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(report)
    print(report)
    print(f"wrote {out}/results.md")


if __name__ == "__main__":
    main()

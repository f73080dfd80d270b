"""FLAN's held-out-cluster experiment at CPU scale, in one command (`make flan`).

Wei et al. 2021 (§3, §4.3): instruction-tune on every task cluster but one and evaluate
zero-shot on the held-out one, against
  (a) the same pretrained model, untuned;
  (b) tuning without instructions: the inputs alone ('none') or behind the dataset's name
      ('task_name'), evaluated with instructions, FLAN's ablation;
  (c) tuning on fewer clusters.
Both quickstart models are used (the decoder and T5 of `make demo`, pretrained first if their
run directories hold no checkpoint). Every run is a `t5x-lite` subprocess, so gin state never
leaks between runs. Results: OUT/results.json, OUT/results.md and OUT/held_out.png.

    python experiments/flan/run.py [--held_out sentiment] [--steps 200] [--out runs/flan]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ARCHITECTURES = {  # quickstart pretraining gin, its MODEL_DIR, the instruction-tuning gin
    "decoder": ("quickstart/decoder_lm.gin", "runs/decoder_lm",
                "quickstart/instruction_tune_decoder.gin"),
    "t5": ("quickstart/t5_span_corruption.gin", "runs/t5_span_corruption",
           "quickstart/instruction_tune_t5.gin"),
}
FEWER_CLUSTERS = ["closed_book_qa", "translation"]


def variants(held_out: str) -> dict[str, list[str]]:
    """Name → the --gin flags of its instruction-tuning run (None: no tuning)."""
    base = [f"--gin.HELD_OUT_CLUSTER='{held_out}'"]
    return {
        "untuned": None,
        "flan": base,
        "no_instructions": base + ["--gin.INSTRUCTIONS='none'"],
        "task_name": base + ["--gin.INSTRUCTIONS='task_name'"],
        "fewer_clusters": base + [f"--gin.TRAIN_CLUSTERS={FEWER_CLUSTERS}"],
    }


def cli(*args: str, log: str) -> None:
    """Runs `t5x-lite ARGS`, its output appended to `log`; stops on failure."""
    command = [sys.executable, "-m", "t5x_lite.main", *args]
    print("$", " ".join(command[2:]), flush=True)
    start = time.time()
    with open(log, "a") as f:
        code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"failed ({code}) after {time.time() - start:.0f} s; see {log}")
    print(f"  done in {time.time() - start:.0f} s", flush=True)


def has_checkpoint(model_dir: str) -> bool:
    directory = os.path.join(model_dir, "checkpoints")
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def run_architecture(name, args, log) -> dict[str, dict]:
    pretrain_gin, base_dir, tune_gin = ARCHITECTURES[name]
    if not has_checkpoint(base_dir):
        cli("train", f"--gin_file={pretrain_gin}", f"--gin.MODEL_DIR='{base_dir}'", log=log)
    results = {}
    for variant, flags in variants(args.held_out).items():
        model_dir = base_dir if flags is None else os.path.join(args.out, name, variant)
        if flags is not None and not has_checkpoint(model_dir):
            cli("train", f"--gin_file={tune_gin}", f"--gin.MODEL_DIR='{model_dir}'",
                f"--gin.INIT_FROM='{base_dir}'", f"--gin.TRAIN_STEPS={args.steps}",
                "--gin.EVAL_EVERY=100000", *flags, log=log)
        output_dir = os.path.join(args.out, name, variant, "eval")
        cli("eval", f"--gin_file={tune_gin}", f"--gin.MODEL_DIR='{model_dir}'",
            "--mixture=embedded_suite", f"--cluster={args.held_out}",
            f"--output_dir={output_dir}",
            f"--gin.task_evaluation.run.max_examples={args.max_examples}", log=log)
        with open(os.path.join(output_dir, "results.json")) as f:
            results[variant] = json.load(f)
    return results


def summarize(results) -> str:
    lines = ["| model | variant | " + " | ".join(_tasks(results)) + " | mean | best-dev mean |",
             "|---|---|" + "---|" * (len(_tasks(results)) + 2)]
    for arch, by_variant in results.items():
        for variant, r in by_variant.items():
            cells = [f"{r['tasks'][t]['mean']:.1f} ± {r['tasks'][t]['std']:.1f}"
                     for t in _tasks(results)]
            best = np.mean([t["best_dev_template_test"] for t in r["tasks"].values()])
            lines.append(f"| {arch} | {variant} | " + " | ".join(cells) +
                         f" | {r['mean']:.1f} | {best:.1f} |")
    chance = {t: r["tasks"][t].get("chance") for r in next(iter(results.values())).values()
              for t in r["tasks"]}
    lines.append("\nCells: accuracy (%) mean ± std over the evaluation templates; chance: " +
                 ", ".join(f"{t} {c:.1f}" for t, c in chance.items() if c is not None))
    return "\n".join(lines) + "\n"


def _tasks(results) -> list[str]:
    first = next(iter(next(iter(results.values())).values()))
    return list(first["tasks"])


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(results)
    names = list(next(iter(results.values())))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(archs)
    for i, arch in enumerate(archs):
        means = [results[arch][v]["mean"] for v in names]
        spread = [np.mean([t["std"] for t in results[arch][v]["tasks"].values()]) for v in names]
        ax.bar(np.arange(len(names)) + i * width, means, width, yerr=spread, capsize=3,
               label=arch)
    chance = np.mean([t["chance"] for t in results[archs[0]][names[0]]["tasks"].values()
                      if "chance" in t])
    ax.axhline(chance, color="gray", linestyle="--", label="chance")
    ax.set_xticks(np.arange(len(names)) + width * (len(archs) - 1) / 2, names)
    ax.set_ylabel("held-out accuracy (%), mean over tasks and templates")
    ax.set_title("zero-shot on the held-out cluster")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held_out", default="sentiment")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--max_examples", type=int, default=100,
                        help="per split (dev, test) and task")
    parser.add_argument("--out", default="runs/flan")
    parser.add_argument("--architectures", default="decoder,t5")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "log.txt")
    results = {arch: run_architecture(arch, args, log)
               for arch in args.architectures.split(",")}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = summarize(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"Held-out cluster: {args.held_out}; {args.steps} tuning steps.\n\n{table}")
    plot(results, os.path.join(args.out, "held_out.png"))
    print(table)
    print(f"wrote {args.out}/results.md and {args.out}/held_out.png")


if __name__ == "__main__":
    main()

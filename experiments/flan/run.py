"""FLAN's held-out-cluster experiment at CPU scale, in one command (`make flan`).

Wei et al. 2021 (§3, §4.3): instruction-tune on every task cluster but one and evaluate
zero-shot on the held-out one, against
  (a) the same pretrained model, untuned;
  (b) tuning without instructions: the inputs alone ('none') or behind the dataset's name
      ('task_name'), evaluated with instructions, FLAN's ablation;
  (c) tuning on fewer clusters.
Both quickstart models are used (the decoder and T5 of `make demo`, pretrained first if their
run directories hold no checkpoint). Every run is a `t5x-lite` subprocess, so gin state never
leaks between runs. Tasks of the training clusters (--held_in) are evaluated the same way,
to show what tuning taught where it did train. Results: OUT/results.json, OUT/results.md
and OUT/held_out.png.

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


def run_architecture(name, args, log) -> dict[str, dict]:
    """Pretrains (or finishes pretraining), tunes and evaluates one architecture. `train`
    resumes from a run's checkpoint, so a rerun redoes only what is missing."""
    pretrain_gin, base_dir, tune_gin = ARCHITECTURES[name]
    cli("train", f"--gin_file={pretrain_gin}", f"--gin.MODEL_DIR='{base_dir}'", log=log)
    results = {}
    for variant, flags in variants(args.held_out).items():
        model_dir = base_dir if flags is None else os.path.join(args.out, name, variant)
        if flags is not None:
            cli("train", f"--gin_file={tune_gin}", f"--gin.MODEL_DIR='{model_dir}'",
                f"--gin.INIT_FROM='{base_dir}'", f"--gin.TRAIN_STEPS={args.steps}",
                "--gin.EVAL_EVERY=100000", *flags, log=log)
        for group, selection in (("held_out", ["--mixture=embedded_suite",
                                               f"--cluster={args.held_out}"]),
                                 ("held_in", [f"--tasks={args.held_in}"])):
            output_dir = os.path.join(args.out, name, variant, f"eval_{group}")
            if not os.path.exists(os.path.join(output_dir, "results.json")):
                cli("eval", f"--gin_file={tune_gin}", f"--gin.MODEL_DIR='{model_dir}'",
                    *selection, f"--output_dir={output_dir}",
                    f"--gin.task_evaluation.run.max_examples={args.max_examples}", log=log)
            with open(os.path.join(output_dir, "results.json")) as f:
                results.setdefault(group, {})[variant] = json.load(f)
    return results


def summarize(results, group: str) -> str:
    """One row per model and variant: each task's mean ± std over templates, then the mean
    over tasks and the mean of the best-dev templates' test scores."""
    by_variant = {arch: r[group] for arch, r in results.items()}
    first = next(iter(next(iter(by_variant.values())).values()))
    tasks = list(first["tasks"])
    lines = ["| model | variant | " + " | ".join(tasks) + " | mean | best-dev mean |",
             "|---|---|" + "---|" * (len(tasks) + 2)]
    for arch, variants_ in by_variant.items():
        for variant, r in variants_.items():
            cells = [f"{r['tasks'][t]['mean']:.1f} ± {r['tasks'][t]['std']:.1f}" for t in tasks]
            best = np.mean([t["best_dev_template_test"] for t in r["tasks"].values()])
            lines.append(f"| {arch} | {variant} | " + " | ".join(cells) +
                         f" | {r['mean']:.1f} | {best:.1f} |")
    chance = ", ".join(f"{t} {first['tasks'][t]['chance']:.1f}" for t in tasks
                       if "chance" in first["tasks"][t])
    lines.append(f"\nCells: accuracy (%), mean ± std over the evaluation templates; chance: "
                 f"{chance}.")
    return "\n".join(lines) + "\n"


def plot(results, path: str) -> None:
    """Bars per variant and model: mean over tasks and templates, error bar = the mean over
    tasks of the std over templates; a dashed line at chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, group in zip(axes, ("held_out", "held_in")):
        names = list(results[archs[0]][group])
        width = 0.8 / len(archs)
        for i, arch in enumerate(archs):
            runs = [results[arch][group][v] for v in names]
            spread = [np.mean([t["std"] for t in r["tasks"].values()]) for r in runs]
            ax.bar(np.arange(len(names)) + i * width, [r["mean"] for r in runs], width,
                   yerr=spread, capsize=3, label=arch)
        tasks = results[archs[0]][group][names[0]]["tasks"].values()
        ax.axhline(np.mean([t["chance"] for t in tasks if "chance" in t]), color="gray",
                   linestyle="--", label="chance")
        ax.set_xticks(np.arange(len(names)) + width * (len(archs) - 1) / 2, names,
                      rotation=15)
        ax.set_title(f"{group.replace('_', '-')} tasks, zero-shot")
    axes[0].set_ylabel("accuracy (%), mean over tasks and templates")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held_out", default="sentiment")
    parser.add_argument("--held_in", default="country_continent,country_borders",
                        help="tasks of training clusters, evaluated the same way: does "
                             "tuning teach what it trains on?")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--max_examples", type=int, default=50,
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
    report = (f"Held out: the {args.held_out} cluster; held in: {args.held_in}; "
              f"{args.steps} tuning steps; {args.max_examples} dev and test examples a "
              f"task.\n\n## Held-out cluster\n\n{summarize(results, 'held_out')}\n"
              f"## Held-in tasks\n\n{summarize(results, 'held_in')}")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report)
    plot(results, os.path.join(args.out, "held_out.png"))
    print(report)
    print(f"wrote {args.out}/results.md and {args.out}/held_out.png")


if __name__ == "__main__":
    main()

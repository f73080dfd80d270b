"""The `t5x-lite` command line's flags (t5x_lite/main.py runs the commands).

`--gin.NAME=VALUE` flags are split off before argparse sees the rest; `launch` has its own
parser because everything after its `--` is the remote command, untouched.
"""
from __future__ import annotations

import argparse
from typing import Collection

def parser(distributed_commands: Collection[str]) -> argparse.ArgumentParser:
    """Every subcommand's flags; distributed_commands also take the multi-process flags."""
    root = argparse.ArgumentParser(
        prog="t5x-lite", description="Train, inspect and run text models configured with gin.",
        epilog="Bindings: --gin.NAME=VALUE (e.g. --gin.TRAIN_STEPS=100, "
               "--gin.MODEL_DIR=\"'/tmp/run'\").",
    )
    sub = root.add_subparsers(dest="command", required=True)
    commands = {
        "train": "train a model (resumes from MODEL_DIR's latest checkpoint)",
        "params": "print parameter counts per top-level module, computed abstractly",
        "convert": "import a transformers checkpoint (--from_hf DIR --to MODEL_DIR) or export "
                   "one (--to_hf OUT_DIR --from MODEL_DIR)",
        "infer": "generate for each {\"inputs\": ...} line of --input into --output (JSONL)",
        "score": "log-likelihood of each line's targets given its inputs (JSONL in and out)",
        "eval": "loss/perplexity/accuracy on EVAL_DATA; exact match, BLEU, ROUGE with --input;"
                " instruction tasks per template with --tasks, --cluster or --mixture",
        "tasks": "list the registered instruction tasks, clusters and mixtures",
        "mixture": "print each task of the INSTRUCTION_DATA mixture: examples, rate, share",
        "train_reward": "train a reward model on ranked comparisons (runs/reward_model.gin)",
        "train_classifier": "fine-tune an encoder's classifier head on an instruction task's "
                            "labels (runs/classifier.gin)",
        "dpo": "fine-tune a policy with DPO / cDPO / IPO on comparisons (runs/dpo.gin)",
        "ppo": "optimise a policy with PPO (or PPO-ptx) against a reward model (runs/ppo.gin)",
        "best_of_n": "sample n responses per --input prompt, keep the reward model's best "
                     "(--output JSONL: a rejection-sampling SFT set; runs/best_of_n.gin)",
        "memorization": "extractable memorization of TRAIN_DATA by duplicate count and prompt "
                        "length (Carlini et al. 2023): .json, .md and .png in --output_dir",
        "embed": "mean-pooled, L2-normalised embeddings of --input's texts (.npy + .jsonl); "
                 "with --queries, each query's nearest texts (JSONL)",
        "clean": "clean a corpus (dedup, PII, quality, bad words, language) into a TFDS "
                 "dataset with a report; steps in runs/clean.gin (the default)",
        "sweep": "run a sweep file's trials (each stage its own process; reruns skip "
                 "finished trials), then write results.csv/.md and plots",
        "launch": "run a t5x-lite command on every worker of a Cloud TPU VM slice: launch "
                  "--tpu=NAME --zone=Z [--create ...] -- train ... (see launch --help)",
        "compile": "compile the run's train step ahead of time for a TPU topology on this "
                   "host: memory per device, FLOPs, roofline step time; exit 3 if it does "
                   "not fit (--search: a grid of meshes, batches, microbatches, remat)",
    }
    for name, help_text in commands.items():
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--gin_file", action="append", default=[],
                             help="a .gin file (repeatable)")
        command.add_argument("--gin_search_paths", default="",
                             help="comma-separated directories to find gin files in")
        command.add_argument("--verbose", action="store_true",
                             help="show tracebacks and library logs")
        if name == "convert":
            _convert_arguments(command)
        if name in distributed_commands:
            _distributed_arguments(command)
        if name in ("infer", "score", "eval", "best_of_n"):
            command.add_argument("--input", required=name != "eval",
                                 help="JSONL input file")
            command.add_argument("--output", required=name != "eval",
                                 help="JSONL output file (written atomically)")
        if name == "eval":
            _task_eval_arguments(command)
        if name == "clean":
            _clean_arguments(command)
        if name == "embed":
            _embed_arguments(command)
        if name == "compile":
            _compile_arguments(command)
        if name == "sweep":
            _sweep_arguments(command)
        if name == "memorization":
            command.add_argument("--output_dir", help="memorization.json / .md / .png "
                                 "(default MODEL_DIR/memorization)")
            command.add_argument("--sequences", help="JSONL of canaries, {\"text\": ...} per "
                                 "line, measured alongside sampled training windows")
        if name == "tasks":
            command.add_argument("--cluster", help="only this cluster's tasks")
            command.add_argument("--data_dir", help="where FLAN's TFDS datasets are prepared "
                                 "(to count their examples)")
            command.add_argument("--no_counts", action="store_true",
                                 help="skip counting examples (no data is read or built)")
    return root


def _task_eval_arguments(command: argparse.ArgumentParser) -> None:
    group = command.add_argument_group(
        "instruction tasks", "evaluate per task and template (t5x_lite/task_evaluation.py; "
        "more settings as --gin.task_evaluation.run.NAME=VALUE)")
    group.add_argument("--tasks", help="comma-separated task names")
    group.add_argument("--mixture", help="every task of this registered mixture")
    group.add_argument("--cluster", help="every task of this cluster (of --mixture if given)")
    group.add_argument("--output_dir", help="results.json / results.md (default "
                       "MODEL_DIR/task_eval)")


def _embed_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--input", help="JSONL (a text field per line) or tfds:NAME[:VERSION]"
                         "[@SPLIT] (from embeddings.run.data_dir); without it, bind "
                         "embeddings.run.data (e.g. to %%EVAL_DATA)")
    command.add_argument("--output", required=True, help="OUT.npy: float32 [n, d]; OUT.jsonl "
                         "beside it says which text each row is")
    command.add_argument("--queries", help="JSONL of queries (the same text field)")
    command.add_argument("--neighbours", help="JSONL: each query's nearest texts and cosines")
    command.add_argument("--k", type=int, help="neighbours per query (default 5)")
    command.add_argument("--text_field", help="the text field (default 'text')")


def _clean_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--input", action="append", required=True,
                         help="tfds:NAME[:VERSION][@SPLIT], JSONL files or text files (globs; "
                              "repeatable: the inputs form one corpus)")
    command.add_argument("--output_dataset", required=True, help="TFDS name of the result")
    command.add_argument("--data_dir", help="where the result is written (default: the data "
                         "dir `train` reads, $T5X_LITE_DATA_DIR or ~/.cache/t5x_lite)")
    command.add_argument("--split", default="train", help="the output split's name")
    command.add_argument("--text_field", default="text", help="the text field of JSONL input")
    command.add_argument("--input_data_dir", help="TFDS data dir of a tfds: input "
                         "(default: --data_dir)")
    command.add_argument("--runner", help="run as an Apache Beam pipeline on this runner "
                         "(DirectRunner, DataflowRunner, FlinkRunner, SparkRunner); "
                         "default: in this process")
    command.add_argument("--beam_options", default="",
                         help="Beam pipeline options, e.g. \"--project=P --region=R "
                              "--temp_location=gs://B/tmp\"")


def _sweep_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--sweep_file", required=True, help="a sweep (TOML, t5x_lite/sweeps/"
                         "spec.py; e.g. experiments/sweeps/*.toml)")
    command.add_argument("--output_dir", default="runs/sweeps",
                         help="trials go to OUTPUT_DIR/<sweep name>/<trial> (local or gs://)")
    command.add_argument("--parallel", type=int, default=1, help="trials run at once")
    command.add_argument("--dry_run", action="store_true",
                         help="print every stage's command of every trial; run nothing")
    command.add_argument("--report_only", action="store_true",
                         help="rebuild results.csv/.md and plots from the trial directories")
    tpu = command.add_argument_group("on Cloud TPU VMs (--launch=tpu; see `launch --help`)")
    tpu.add_argument("--launch", choices=("local", "tpu"), default="local",
                     help="tpu: each trial on its own slice, named TPU_PREFIX-<trial hash>")
    tpu.add_argument("--tpu_prefix", default="sweep")
    for flag in ("--zone", "--project", "--accelerator_type", "--runtime_version"):
        tpu.add_argument(flag)
    tpu.add_argument("--queued", action="store_true")
    tpu.add_argument("--spot", action="store_true")
    tpu.add_argument("--poll_seconds", type=float, default=30.0)
    tpu.add_argument("--keep_tpus", action="store_true",
                     help="leave the trials' slices up when the sweep ends")


def _compile_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--topology", required=True,
                         help="a Cloud TPU accelerator type (v4-8, v5p-256, v5litepod-16, "
                              "v6e-64) or libtpu's chip grid (v5e:4x4, v5p:4x4x8)")
    command.add_argument("--num_slices", type=int, default=1,
                         help="identical slices joined over DCN (DCN_MESH_SHAPE; default "
                              "data parallelism over them)")
    command.add_argument("--search", action="store_true",
                         help="try a grid of meshes, batch sizes, microbatches and remat "
                              "policies; print those that fit, fastest first")
    command.add_argument("--csv", help="with --search: the table as CSV here")
    command.add_argument("--decode", action="store_true",
                         help="also compile decoding's prefill and one step (BATCH_SIZE rows)")
    grid = command.add_argument_group("search grid", "comma-separated values (aot_search.Grid)")
    grid.add_argument("--search_model_parallel", default="1,4,8",
                      help="tensor-parallel sizes (model axis; fsdp takes the rest)")
    grid.add_argument("--search_data_parallel", default="1", help="pure data-parallel sizes")
    grid.add_argument("--search_batch_sizes", default="",
                      help="global batch sizes (default: BATCH_SIZE)")
    grid.add_argument("--search_microbatches", default="1,4", help="microbatch counts")
    grid.add_argument("--search_remat", default="own,dots_with_no_batch_dims,full",
                      help="remat policies ('own': the model's)")


def _distributed_arguments(command: argparse.ArgumentParser) -> None:
    group = command.add_argument_group(
        "multi-process", "every process runs the same command (see t5x_lite/distributed.py)")
    group.add_argument("--coordinator_address", metavar="HOST:PORT",
                       help="process 0's address, for jax.distributed.initialize")
    group.add_argument("--num_processes", type=int, help="how many processes the job has")
    group.add_argument("--process_id", type=int, help="this process's index, 0 .. N-1")
    group.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                       help="auto (default): initialize when these flags are given or on a "
                            "detected TPU pod/VM; on: always (jax detects SLURM, MPI, ...); "
                            "off: never")


def _convert_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--from_hf", metavar="HF_DIR",
                         help="a transformers save_pretrained directory to import")
    command.add_argument("--to", metavar="MODEL_DIR", help="where the import is written")
    command.add_argument("--to_hf", metavar="OUT_DIR",
                         help="where config.json + model.safetensors are written")
    command.add_argument("--from", dest="from_dir", metavar="MODEL_DIR",
                         help="an imported model directory or a training run to export")
    command.add_argument("--unrolled", action="store_true",
                         help="import with scan_layers=False (layers_0, layers_1, ...)")
    command.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                         help="dtype of the exported tensors")


def split_gin_bindings(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates `--gin.NAME=VALUE` (or `--gin.NAME VALUE`) flags from the rest."""
    rest, bindings = [], []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg.startswith("--gin."):
            body = arg[len("--gin."):]
            if "=" not in body:
                if index + 1 >= len(argv):
                    raise SystemExit(f"t5x-lite: error: {arg} needs a value (--gin.NAME=VALUE)")
                body = f"{body}={argv[index + 1]}"
                index += 1
            name, value = body.split("=", 1)
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
        index += 1
    return rest, bindings


def launch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t5x-lite launch", description="run a t5x-lite command on every worker of a "
        "Cloud TPU VM slice (t5x_lite/launch.py): t5x-lite launch --tpu=NAME --zone=Z "
        "[--create ...] -- train --gin_file=...")
    parser.add_argument("--tpu", required=True, help="the TPU VM (or queued resource) name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project")
    parser.add_argument("--accelerator_type", help="e.g. v5litepod-16, v5p-256, v4-32")
    parser.add_argument("--runtime_version", help="the TPU VM software version")
    parser.add_argument("--create", action="store_true", help="create the slice (and "
                        "recreate it after a preemption) when it is not up")
    parser.add_argument("--queued", action="store_true", help="as a queued resource")
    capacity = parser.add_mutually_exclusive_group()
    capacity.add_argument("--spot", action="store_true")
    capacity.add_argument("--reserved", action="store_true")
    parser.add_argument("--max_restarts", type=int, default=3,
                        help="recreate-and-rerun tries after a preemption")
    parser.add_argument("--poll_seconds", type=float, default=30.0)
    parser.add_argument("--log_dir", default="runs/launch", help="per-worker logs (local)")
    parser.add_argument("--delete", action="store_true", help="tear the slice down")
    parser.add_argument("--dry_run", action="store_true", help="print every command only")
    parser.add_argument("--emit", choices=("skypilot", "xpk"),
                        help="print the equivalent SkyPilot task YAML or xpk command instead")
    parser.add_argument("--verbose", action="store_true")
    return parser

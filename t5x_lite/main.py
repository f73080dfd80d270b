"""The `t5x-lite` command line (also `python -m t5x_lite.main`).

    t5x-lite train  --gin_file=quickstart/decoder_lm.gin --gin.TRAIN_STEPS=200
    t5x-lite params --gin_file=models/decoder_50m.gin
    t5x-lite convert --from_hf HF_DIR --to MODEL_DIR      # transformers -> t5x_lite
    t5x-lite convert --to_hf OUT_DIR --from MODEL_DIR     # t5x_lite -> transformers
    t5x-lite memorization --gin_file=quickstart/decoder_lm.gin   # Carlini et al. 2023 extraction
    t5x-lite embed --gin_file=quickstart/bert_mlm.gin --input=texts.jsonl --output=emb.npy \
        [--queries=q.jsonl --neighbours=nn.jsonl --k=5]  # mean-pooled embeddings, search
    t5x-lite clean --input=tfds:python_docs@train --output_dataset=docs_clean  # runs/clean.gin
    t5x-lite compile --topology=v5p-256 --gin_file=models/gpt3_175b.gin \
        --gin_file=runs/pretrain_decoder.gin [--search]  # will it fit? (exit 3 if not)
    t5x-lite sweep --sweep_file=experiments/sweeps/learning_rate.toml [--dry_run]
    t5x-lite launch --tpu=NAME --zone=Z [--create ...] -- train --gin_file=...

Every subcommand takes `--gin_file` (repeatable), `--gin.NAME=VALUE` (repeatable, applied
after the files; later wins) and `--gin_search_paths`. A configuration mistake prints one
line naming the binding and its file and exits with code 2 (`--verbose` adds the traceback).

train, infer, score and eval run multi-process when every host runs the same command with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`, or with no flags on a
TPU pod, where jax finds them itself (see t5x_lite/distributed.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

EXIT_CONFIG_ERROR = 2
# Each inference command runs on the MODEL, VOCABULARY and MODEL_DIR the gin files define;
# anything else (decoding.Strategy.*, inference.infer.max_new_tokens, ...) is a --gin flag.
_INFERENCE_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.inference as inference
import t5x_lite.decoding as decoding
inference.{fn}.model = %MODEL
inference.{fn}.vocabulary = %VOCABULARY
inference.{fn}.model_dir = %MODEL_DIR
"""
WIRING = {
    "infer": _INFERENCE_WIRING.format(fn="infer") + "inference.infer.strategy = @decoding.Strategy()",
    "score": _INFERENCE_WIRING.format(fn="score"),
    "best_of_n": "from __gin__ import dynamic_registration",  # runs/best_of_n.gin binds it
    "clean": "from __gin__ import dynamic_registration",  # runs/clean.gin binds it
    "eval": _INFERENCE_WIRING.format(fn="evaluate") + "\n".join([
        "inference.evaluate.eval_data = %EVAL_DATA",
        "inference.evaluate.feature_lengths = %TASK_FEATURE_LENGTHS",
        "inference.evaluate.objective = %OBJECTIVE",
        "inference.evaluate.data_shards = %DATA_SHARDS"]),
}
# `memorization`: extractable memorization of TRAIN_DATA, read as training read it
# (t5x_lite/memorization.py; settings as --gin.memorization.run.NAME=VALUE).
MEMORIZATION_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.memorization as memorization
memorization.run.model = %MODEL
memorization.run.vocabulary = %VOCABULARY
memorization.run.model_dir = %MODEL_DIR
memorization.run.data = %TRAIN_DATA
memorization.run.objective = %OBJECTIVE
memorization.run.feature_lengths = %TASK_FEATURE_LENGTHS"""
# `embed`: sentence embeddings and nearest neighbours (t5x_lite/embeddings.py; settings as
# --gin.embeddings.run.NAME=VALUE, e.g. max_length, batch_size, max_texts).
EMBED_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.embeddings as embeddings
embeddings.run.model = %MODEL
embeddings.run.vocabulary = %VOCABULARY
embeddings.run.model_dir = %MODEL_DIR"""
# `eval --tasks/--cluster/--mixture`: instruction tasks per template (task_evaluation.py).
TASK_EVAL_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.task_evaluation as task_evaluation
task_evaluation.run.model = %MODEL
task_evaluation.run.vocabulary = %VOCABULARY
task_evaluation.run.model_dir = %MODEL_DIR"""
# `mixture` prints the instruction-tuning data the files bind to INSTRUCTION_DATA.
MIXTURE_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.data.tasks.listing as listing
listing.mixture_lines.data = %INSTRUCTION_DATA"""
# Training jobs: (module, function, argument check run before gin builds data and models).
# Each is configured by its run file (runs/pretrain_*.gin, runs/reward_model.gin, runs/dpo.gin,
# runs/ppo.gin, runs/classifier.gin), with the same flags, errors, operative config and resume
# behaviour.
TRAINING_JOBS = {
    "train": ("t5x_lite.train_loop", "train", "check_arguments"),
    "train_reward": ("t5x_lite.rlhf.reward_model", "train_reward", "check_arguments"),
    "train_classifier": ("t5x_lite.classification", "train_classifier", "check_arguments"),
    "dpo": ("t5x_lite.rlhf.dpo", "train_dpo", None),
    "ppo": ("t5x_lite.rlhf.ppo", "train_ppo", None),
}
# Commands that run on the devices of a (possibly multi-process) job.
DISTRIBUTED_COMMANDS = (*TRAINING_JOBS, "infer", "score", "eval", "best_of_n", "memorization",
                        "embed")
# `params` counts whatever model the files bind to the MODEL macro.
PARAMS_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.metrics as metrics
metrics.parameter_counts.model = %MODEL"""

# `convert --to_hf` of a training run: its gin MODEL is handed to export_hf.
EXPORT_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.interop.convert as convert
convert.export_hf.model = %MODEL"""

# `compile` builds the train step from a model and a run file alone: it reads no data and
# writes nothing, so the run file's data macros and MODEL_DIR need no value.
COMPILE_WIRING = "\n".join(f"{name} = None" for name in
                           ("VOCABULARY", "TRAIN_DATA", "EVAL_DATA", "MODEL_DIR"))

# Keep jax/absl chatter out of the terminal unless asked for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t5x-lite", description="Train, inspect and run text models configured with gin.",
        epilog="Bindings: --gin.NAME=VALUE (e.g. --gin.TRAIN_STEPS=100, "
               "--gin.MODEL_DIR=\"'/tmp/run'\").",
    )
    sub = parser.add_subparsers(dest="command", required=True)
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
        if name in DISTRIBUTED_COMMANDS:
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
    return parser


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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["launch"]:  # everything after `--` is the remote command, untouched
        return _launch(argv[1:])
    rest, bindings = split_gin_bindings(argv)
    args = _parser().parse_args(rest)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in ("absl", "jax", "orbax", "grain", "tensorflow_datasets", "gcsfs"):
            logging.getLogger(noisy).setLevel(logging.ERROR)

    from t5x_lite import config as config_lib  # imports gin: the edge of the program
    from t5x_lite.errors import InputError

    try:
        if args.command in DISTRIBUTED_COMMANDS:
            # Before anything else touches jax's devices (gin below builds models and data).
            from t5x_lite import distributed

            distributed.initialize(args.coordinator_address, args.num_processes,
                                   args.process_id, mode=args.distributed)
        search_paths = [p for p in args.gin_search_paths.split(",") if p]
        if args.command == "convert":
            return _convert(args, bindings, search_paths)
        if args.command == "tasks":
            return _tasks(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "compile":  # libtpu compiles for the topology; no TPU is used
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        extra = [_wiring(args)] if args.command not in TRAINING_JOBS else []
        gin_files = args.gin_file or (["runs/clean.gin"] if args.command == "clean" else [])
        gin_config = config_lib.GinConfig(gin_files, extra + bindings, search_paths)
        if args.command in TRAINING_JOBS:
            return _train(gin_config, *TRAINING_JOBS[args.command])
        if args.command == "best_of_n":
            return _best_of_n(args, gin_config)
        if args.command == "clean":
            return _clean(args, gin_config)
        if args.command == "compile":
            return _compile(args, gin_config)
        if args.command == "params":
            return _params(gin_config)
        if args.command == "mixture":
            return _mixture(gin_config)
        if args.command == "eval" and _evaluates_tasks(args):
            return _task_eval(args, gin_config)
        if args.command == "memorization":
            return _memorization(args, gin_config)
        if args.command == "embed":
            return _embed(args, gin_config)
        return _inference(args, gin_config)
    except (config_lib.ConfigError,) as error:
        if args.verbose:
            traceback.print_exc()
        print(f"t5x-lite: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except InputError as error:  # a value, file or request the model cannot take
        if args.verbose:
            traceback.print_exc()
        print(f"t5x-lite: input error: {error}".splitlines()[0], file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except Exception as error:  # noqa: BLE001 - one line unless --verbose
        if args.verbose:
            traceback.print_exc()
        print(f"t5x-lite: error: {type(error).__name__}: {error}".splitlines()[0],
              file=sys.stderr)
        return 1
    return 0


def _launch_parser() -> argparse.ArgumentParser:
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


def _launch(argv: list[str]) -> int:
    import dataclasses
    import shlex

    from t5x_lite import launch as launch_lib, paths
    from t5x_lite.errors import InputError

    own, remote = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    args = _launch_parser().parse_args(own)
    try:
        fields = {f.name for f in dataclasses.fields(launch_lib.Launch)}
        spec = launch_lib.Launch(**{k: v for k, v in vars(args).items() if k in fields})
        if args.emit:
            emit = launch_lib.emit_skypilot if args.emit == "skypilot" else launch_lib.emit_xpk
            print(emit(spec, remote), end="")
            return 0
        launcher = launch_lib.Launcher(spec)
        if args.delete and not remote:
            print(shlex.join(launch_lib.delete_command(spec)) if args.dry_run
                  else launcher.delete())
            return 0
        if not remote:
            raise InputError("nothing to run: put the t5x-lite command after --, e.g. "
                             "-- train --gin_file=...")
        if args.dry_run:
            print("\n".join(launch_lib.dry_run(spec, remote)))
            return 0
        archive = str(paths.ensure_dir(args.log_dir) / launch_lib.ARCHIVE)
        code = launcher.launch_and_run(remote, launch_lib.code_archive(archive))
        if args.delete:
            print(launcher.delete())
        return code
    except InputError as error:
        print(f"t5x-lite launch: input error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except Exception as error:  # noqa: BLE001
        if args.verbose:
            traceback.print_exc()
        print(f"t5x-lite launch: error: {error}".splitlines()[0], file=sys.stderr)
        return 1


def _evaluates_tasks(args) -> bool:
    return any(getattr(args, name, None) for name in ("tasks", "cluster", "mixture"))


def _wiring(args) -> str:
    if args.command == "compile":
        return COMPILE_WIRING
    if args.command == "eval" and _evaluates_tasks(args):
        return TASK_EVAL_WIRING
    if args.command == "mixture":
        return MIXTURE_WIRING
    if args.command == "memorization":
        return MEMORIZATION_WIRING
    if args.command == "embed":
        return EMBED_WIRING
    return WIRING.get(args.command, PARAMS_WIRING)


def _tasks(args) -> int:
    from t5x_lite.data.tasks import listing

    print("\n".join(listing.task_lines(args.data_dir, args.cluster, not args.no_counts)))
    return 0


def _mixture(gin_config) -> int:
    from t5x_lite import config as config_lib
    from t5x_lite.data.tasks import listing

    print("\n".join(config_lib.call(gin_config, listing.mixture_lines)))
    return 0


def _task_eval(args, gin_config) -> int:
    from t5x_lite import config as config_lib, task_evaluation

    results = config_lib.call(gin_config, task_evaluation.run, tasks=args.tasks,
                              cluster=args.cluster, mixture=args.mixture,
                              output_dir=args.output_dir)
    print(task_evaluation.markdown_table(results))
    return 0


def _memorization(args, gin_config) -> int:
    from t5x_lite import config as config_lib, memorization

    summary = config_lib.call(gin_config, memorization.run, output_dir=args.output_dir,
                              sequences_path=args.sequences)
    print(memorization.markdown(summary), end="")
    return 0


def _embed(args, gin_config) -> int:
    from t5x_lite import config as config_lib, embeddings

    given = {"k": args.k, "text_field": args.text_field}  # else gin's binding or the default
    result = config_lib.call(gin_config, embeddings.run, input_path=args.input,
                             output_path=args.output, queries_path=args.queries,
                             neighbours_path=args.neighbours,
                             **{name: value for name, value in given.items() if value is not None})
    count, dim = result["embeddings"].shape
    print(f"wrote {count} embeddings (dim {dim}) to {args.output} and "
          f"{embeddings.sidecar_path(args.output)}"
          + (f"; {result['truncated']} texts truncated" if result["truncated"] else "")
          + (f"; neighbours of {len(result['neighbours'])} queries to {args.neighbours}"
             if result["neighbours"] is not None else ""))
    return 0


def _train(gin_config, module_name: str, function: str, check: str | None) -> int:
    import importlib

    from t5x_lite import config as config_lib

    module = importlib.import_module(module_name)
    job = getattr(module, function)
    model_dir = config_lib.macro_value("MODEL_DIR")
    writes_config = isinstance(model_dir, str)  # process 0 writes it (write_operative_config)
    if writes_config:
        config_lib.write_operative_config(model_dir, "config.gin")  # the full config, up front
    # gin builds the vocabulary (minutes on first use) before the job runs: check first.
    if check is not None:
        config_lib.check_arguments(gin_config, job, getattr(module, check))
    try:
        config_lib.call(gin_config, job)
    finally:
        if writes_config:
            config_lib.write_operative_config(model_dir, "config.gin")  # what was really used
    return 0


def _best_of_n(args, gin_config) -> int:
    from t5x_lite import config as config_lib
    from t5x_lite.rlhf import best_of_n

    records = config_lib.call(gin_config, best_of_n.best_of_n, input_path=args.input,
                              output_path=args.output)
    print(f"wrote {len(records)} best-of-n responses to {args.output}: "
          f"{best_of_n.summary(records)}")
    return 0


def _clean(args, gin_config) -> int:
    from t5x_lite import config as config_lib
    from t5x_lite.data import pipeline
    from t5x_lite.data.cleaning import clean

    data_dir = args.data_dir or pipeline.default_data_dir()
    summary = config_lib.call(
        gin_config, clean.clean, inputs=args.input, output_dataset=args.output_dataset,
        data_dir=data_dir, split=args.split, text_field=args.text_field,
        input_data_dir=args.input_data_dir, runner=args.runner, beam_options=args.beam_options)
    docs = summary["documents"]
    print(f"{args.output_dataset}: kept {docs['out']:,} of {docs['in']:,} documents; "
          f"report in {data_dir}/{args.output_dataset}/1.0.0/report.md")
    return 0


def _sweep(args) -> int:
    from t5x_lite.sweeps import report, runner, spec

    sweep = spec.load(args.sweep_file)
    execute = runner.run_local
    if args.launch == "tpu" and not (args.report_only or args.dry_run):
        execute = _tpu_executor(args)
    if not args.report_only:
        try:
            outcomes = runner.run_sweep(sweep, args.output_dir, parallel=args.parallel,
                                        dry_run=args.dry_run, execute=execute)
        finally:
            _delete_tpus(args, execute)
        if args.dry_run:
            return 0
        failed = sum(o.status == "failed" for o in outcomes)
        print(f"{len(outcomes) - failed} of {len(outcomes)} trials done, {failed} failed")
    for what, path in report.write(sweep, args.output_dir).items():
        print(f"wrote {what}: {path}")
    return 0


def _tpu_executor(args):
    from t5x_lite import launch as launch_lib, paths

    if paths.is_local(args.output_dir):
        print(f"t5x-lite sweep: warning: --output_dir={args.output_dir} is local: the TPU "
              "workers write their MODEL_DIRs there on their own disks (use gs://)",
              file=sys.stderr)
    template = launch_lib.Launch(tpu=args.tpu_prefix, zone=args.zone, project=args.project,
                                 accelerator_type=args.accelerator_type,
                                 runtime_version=args.runtime_version, create=True,
                                 queued=args.queued, spot=args.spot,
                                 poll_seconds=args.poll_seconds)
    archive = str(paths.ensure_dir(template.log_dir) / launch_lib.ARCHIVE)
    return launch_lib.sweep_executor(template, launch_lib.code_archive(archive))


def _delete_tpus(args, execute) -> None:
    from t5x_lite import launch as launch_lib

    for name in getattr(execute, "created", ()) if not args.keep_tpus else ():
        template = launch_lib.Launch(tpu=name, zone=args.zone, project=args.project,
                                     queued=args.queued)
        print(launch_lib.Launcher(template).delete())


def _compile(args, gin_config) -> int:
    from t5x_lite import aot_search, config as config_lib, train_loop

    names = aot_search.TRAIN_ARGUMENTS
    train = config_lib.bound_arguments(gin_config, train_loop.train, names)
    missing = [name for name in names if name not in train]
    if missing:
        raise config_lib.ConfigError(
            "compile reads train_loop.train's bindings (a runs/pretrain_*.gin file); not set: "
            + ", ".join(f"train_loop.train.{name}" for name in missing))
    grid = None
    if args.search:
        numbers = lambda text: tuple(int(n) for n in text.split(",") if n)  # noqa: E731
        grid = aot_search.Grid(
            numbers(args.search_model_parallel), numbers(args.search_data_parallel),
            numbers(args.search_batch_sizes) or None, numbers(args.search_microbatches),
            tuple(None if r == "own" else r for r in args.search_remat.split(",")))
    return aot_search.run(train, train_loop.build_trainer, topology=args.topology,
                   num_slices=args.num_slices, grid=grid, csv_path=args.csv,
                   decode=args.decode)


def _inference(args, gin_config) -> int:
    import json

    from t5x_lite import config as config_lib, inference

    paths = {"input_path": args.input, "output_path": args.output}
    if args.command == "infer":
        results = config_lib.call(gin_config, inference.infer, **paths)
        print(f"wrote {len(results)} generations to {args.output}")
    elif args.command == "score":
        results = config_lib.call(gin_config, inference.score, **paths)
        print(f"wrote {len(results)} scores to {args.output}")
    else:
        print(json.dumps(config_lib.call(gin_config, inference.evaluate, **paths), indent=1))
    return 0


def _params(gin_config) -> int:
    from t5x_lite import config as config_lib, metrics

    counts = config_lib.call(gin_config, metrics.parameter_counts)
    width = max(len(name) for name in counts)
    for name, count in counts.items():
        if name != "total":
            print(f"{name:<{width}}  {count:>18,}")
    print(f"total_params: {counts['total']}")
    return 0


def _convert(args, bindings: list[str], search_paths: list[str]) -> int:
    """Import needs no gin. Export takes the architecture from --gin_file(s) if given, else
    MODEL_DIR/model_config.json (written by the import), else MODEL_DIR/config.gin (a
    training run); the weights from the newest MODEL_DIR/checkpoints step, else
    MODEL_DIR/params."""
    from t5x_lite import paths
    from t5x_lite.interop import convert

    if bool(args.from_hf) + bool(args.to_hf) != 1 or bool(args.from_hf) != bool(args.to) \
            or bool(args.to_hf) != bool(args.from_dir):
        raise SystemExit("t5x-lite convert: use --from_hf HF_DIR --to MODEL_DIR, or "
                         "--to_hf OUT_DIR --from MODEL_DIR")
    if args.from_hf:
        module = convert.import_hf(args.from_hf, args.to, scan_layers=not args.unrolled)
        print(f"wrote {type(module).__name__} to {args.to} "
              f"(fine-tune with --gin_file={paths.as_path(args.to) / convert.MODEL_GIN})")
        return 0
    model_dir = args.from_dir
    gin_files = list(args.gin_file)
    run_config = paths.as_path(model_dir) / "config.gin"
    if not gin_files and not (paths.as_path(model_dir) / convert.MODEL_CONFIG).exists() \
            and run_config.exists():
        gin_files = [str(run_config)]
    if not gin_files:
        convert.export_hf(model_dir, args.to_hf, dtype=args.dtype)
    else:
        from t5x_lite import config as config_lib

        gin_config = config_lib.GinConfig(gin_files, [EXPORT_WIRING] + bindings, search_paths)
        # A run fine-tuned from an import keeps the transformers config it came from.
        init_from = config_lib.macro_value("INIT_FROM")
        hf_config = None
        if isinstance(init_from, str):
            imported = paths.as_path(init_from).parent  # INIT_FROM is MODEL_DIR/params
            if (imported / convert.MODEL_CONFIG).exists():
                hf_config = convert.read_model_config(str(imported))[1]
        config_lib.call(gin_config, convert.export_hf, model_dir=model_dir,
                        out_dir=args.to_hf, dtype=args.dtype, hf_config=hf_config)
    print(f"wrote config.json and model.safetensors to {args.to_hf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

import logging
import os
import sys
import traceback

from t5x_lite import cli_arguments, cli_wiring

EXIT_CONFIG_ERROR = 2
# Keep jax/absl chatter out of the terminal unless asked for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["launch"]:  # everything after `--` is the remote command, untouched
        return _launch(argv[1:])
    rest, bindings = cli_arguments.split_gin_bindings(argv)
    args = cli_arguments.parser(cli_wiring.DISTRIBUTED_COMMANDS).parse_args(rest)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in ("absl", "jax", "orbax", "grain", "tensorflow_datasets", "gcsfs"):
            logging.getLogger(noisy).setLevel(logging.ERROR)

    from t5x_lite import config as config_lib  # imports gin: the edge of the program
    from t5x_lite.errors import InputError

    try:
        if args.command in cli_wiring.DISTRIBUTED_COMMANDS:
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
        extra = [cli_wiring.for_command(args)] if args.command not in cli_wiring.TRAINING_JOBS else []
        gin_files = args.gin_file or (["runs/clean.gin"] if args.command == "clean" else [])
        gin_config = config_lib.GinConfig(gin_files, extra + bindings, search_paths)
        if args.command in cli_wiring.TRAINING_JOBS:
            return _train(gin_config, *cli_wiring.TRAINING_JOBS[args.command])
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
        if args.command == "eval" and cli_wiring.evaluates_tasks(args):
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


def _launch(argv: list[str]) -> int:
    import dataclasses
    import shlex

    from t5x_lite import launch as launch_lib, paths
    from t5x_lite.errors import InputError

    own, remote = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    args = cli_arguments.launch_parser().parse_args(own)
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

        gin_config = config_lib.GinConfig(gin_files, [cli_wiring.EXPORT_WIRING] + bindings, search_paths)
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

"""The `t5x-lite` command line (also `python -m t5x_lite.main`).

    t5x-lite train  --gin_file=quickstart/decoder_lm.gin --gin.TRAIN_STEPS=200
    t5x-lite params --gin_file=models/decoder_50m.gin

Every subcommand takes `--gin_file` (repeatable), `--gin.NAME=VALUE` (repeatable, applied
after the files; later wins) and `--gin_search_paths`. A configuration mistake prints one
line naming the binding and its file and exits with code 2 (`--verbose` adds the traceback).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

EXIT_CONFIG_ERROR = 2
# `params` counts whatever model the files bind to the MODEL macro.
PARAMS_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.metrics as metrics
metrics.parameter_counts.model = %MODEL"""

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
    }
    for name, help_text in commands.items():
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--gin_file", action="append", default=[],
                             help="a .gin file (repeatable)")
        command.add_argument("--gin_search_paths", default="",
                             help="comma-separated directories to find gin files in")
        command.add_argument("--verbose", action="store_true",
                             help="show tracebacks and library logs")
    return parser


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
    rest, bindings = split_gin_bindings(argv)
    args = _parser().parse_args(rest)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in ("absl", "jax", "orbax", "grain", "tensorflow_datasets"):
            logging.getLogger(noisy).setLevel(logging.ERROR)

    from t5x_lite import config as config_lib  # imports gin: the edge of the program

    try:
        search_paths = [p for p in args.gin_search_paths.split(",") if p]
        extra = [PARAMS_WIRING] if args.command == "params" else []
        gin_config = config_lib.GinConfig(args.gin_file, extra + bindings, search_paths)
        if args.command == "train":
            return _train(gin_config)
        if args.command == "params":
            return _params(gin_config)
    except config_lib.ConfigError as error:
        if args.verbose:
            traceback.print_exc()
        print(f"t5x-lite: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except Exception as error:  # noqa: BLE001 - one line unless --verbose
        if args.verbose:
            traceback.print_exc()
        print(f"t5x-lite: error: {type(error).__name__}: {error}".splitlines()[0],
              file=sys.stderr)
        return 1
    return 0


def _train(gin_config) -> int:
    from t5x_lite import config as config_lib, train_loop

    model_dir = config_lib.macro_value("MODEL_DIR")
    if isinstance(model_dir, str):
        config_lib.write_operative_config(model_dir, "config.gin")  # the full config, up front
    # gin builds the vocabulary (minutes on first use) before `train` runs: check first.
    config_lib.check_arguments(gin_config, train_loop.train, train_loop.check_arguments)
    try:
        config_lib.call(gin_config, train_loop.train)
    finally:
        if isinstance(model_dir, str):
            config_lib.write_operative_config(model_dir, "config.gin")  # what was really used
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


if __name__ == "__main__":
    sys.exit(main())

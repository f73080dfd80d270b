"""Gin at the edge: find and parse .gin files, turn gin's errors into one readable line, and
write the operative config. The only module besides main.py that imports gin.

Files are found relative to the working directory, then `--gin_search_paths`, then the
packaged `gin_configs/`. `--gin.NAME=VALUE` bindings are applied after the files, in order
(later wins). Any problem with the configuration raises `ConfigError`, whose message names
the binding and the file (and line) it came from; main.py prints it and exits with code 2.
That includes a macro bound but read by nothing (`GinConfig.check_macros_are_used`).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import logging
import os
import re
import tokenize
from typing import Callable, Iterator, Sequence

import gin

from t5x_lite import paths

PACKAGE_GIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gin_configs")
_CALL_MARKER = re.compile(r"\s*In call to configurable '([\w.]+)'.*", re.S)
_SEARCH_PATHS_ADDED: set[str] = set()  # gin keeps its search paths for the whole process
# Macros the CLI reads itself (`macro_value`), not through a binding.
CLI_MACROS = ("MODEL_DIR", "INIT_FROM")
# What model, data and run files define for each other and for the CLI's commands: a gin file
# may define one that this command does not read (a data file's EVAL_DATA under `infer`).
INTERFACE_MACROS = ("MODEL", "VOCABULARY", "TRAIN_DATA", "EVAL_DATA", "TASK_FEATURE_LENGTHS",
                    "OBJECTIVE", "MESH_SHAPE", "DCN_MESH_SHAPE", "LOGICAL_AXIS_RULES")


# gin logs an ERROR on the root logger for each search path an include is *not* in.
logging.getLogger().addFilter(lambda record: record.msg != "Path not found: %s")


class ConfigError(Exception):
    """A configuration mistake, stated in one line that names the binding and its source."""


@dataclasses.dataclass
class Source:
    """A config text and where it came from (a file path or a command-line flag)."""

    name: str
    text: str


class GinConfig:
    """Parses files and bindings once, keeping their text to locate bindings in errors."""

    def __init__(self, gin_files: Sequence[str], bindings: Sequence[str],
                 search_paths: Sequence[str] = ()):
        self.search_paths = [os.getcwd(), *search_paths, PACKAGE_GIN_DIR]
        self.sources: list[Source] = []
        gin.clear_config(clear_constants=True)
        _drop_python_package_reader()
        for path in self.search_paths:
            if path not in _SEARCH_PATHS_ADDED:
                gin.add_config_file_search_path(path)
                _SEARCH_PATHS_ADDED.add(path)
        for gin_file in gin_files:
            path = self.find(gin_file)
            self._parse(Source(path, _read(path)), lambda p=path: gin.parse_config_file(p))
        for binding in bindings:
            # main.py passes `NAME = VALUE`; shown as the flag it came from.
            name = "--gin." + re.sub(r"\s*=\s*", "=", binding, count=1)
            source = Source(name if "\n" not in binding else "<built-in bindings>", binding)
            self._parse(source, lambda b=binding: gin.parse_config(b))
        try:
            gin.finalize()
        except Exception as error:  # noqa: BLE001 - every gin failure becomes one line
            raise self.explain(error) from error
        self.check_macros_are_used()

    def find(self, gin_file: str) -> str:
        gin_file = _as_gin_path(gin_file)  # file:// URLs become local paths; gs:// stays
        absolute = os.path.isabs(gin_file) or not paths.is_local(gin_file)
        bases = [""] if absolute else self.search_paths
        for candidate in (_join(base, gin_file) for base in bases):
            if paths.as_path(candidate).is_file():
                self._add_include_sources(candidate)
                return candidate
        raise ConfigError(
            f"gin file {gin_file!r} not found (looked in: {', '.join(self.search_paths)})"
        )

    def _add_include_sources(self, path: str) -> None:
        """Includes are parsed by gin itself; keep their text too, to locate bindings."""
        text = _read(path)
        for match in re.finditer(r"^include\s+['\"]([^'\"]+)['\"]", text, re.M):
            try:
                included = self.find(match.group(1))
            except ConfigError:
                continue  # gin reports the missing include with its own location
            if all(s.name != included for s in self.sources):
                self.sources.append(Source(included, _read(included)))

    def _parse(self, source: Source, parse: Callable[[], object]) -> None:
        self.sources.append(source)
        try:
            parse()
        except Exception as error:  # noqa: BLE001
            raise self.explain(error, default_source=source) from error

    def check_macros_are_used(self) -> None:
        """A bound macro that no binding reads (`%NAME`, in any file, flag or the CLI's wiring)
        is a mistake: gin would ignore `--gin.TRAIN_STEPZ=3` and train the default number of
        steps. Exempt: CLI_MACROS, and INTERFACE_MACROS when only gin files bind them (a flag
        binding one that this command does not read is still an error)."""
        config = gin.config._CONFIG  # gin has no public view of the parsed bindings
        referenced = set(CLI_MACROS)
        for parameters in config.values():
            for value in parameters.values():
                referenced.update(_macro_references(value))
        for name in (scope for scope, selector in config if selector == "gin.macro"):
            if name in referenced:
                continue
            places = [where for key, _, where in self._bindings() if key == name]
            if name in INTERFACE_MACROS and not any(p.startswith("--gin.") for p in places):
                continue
            # cutoff: the default 0.6 offers VOCAB_SIZE for BATCH_SIZE.
            close = difflib.get_close_matches(name, sorted(referenced | set(INTERFACE_MACROS)),
                                              n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]}?)" if close else ""
            where = places[-1] if places else "<config>"
            raise ConfigError(f"{where}: macro {name} is bound but never used{hint}")

    # ------------------------------------------------------------------ errors
    def explain(self, error: BaseException, default_source: Source | None = None) -> ConfigError:
        """One line: `<file>:<line>: <binding>: <problem>` (or `--gin.NAME=VALUE: ...`)."""
        if isinstance(error, (SyntaxError, tokenize.TokenError)):
            return self._explain_syntax(error, default_source)
        message = str(error)
        configurable = None
        call = _CALL_MARKER.search(message)
        if call:
            configurable = call.group(1)
            message = message[: call.start()]
        first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
        missing = re.match(r"Unable to open file: (.+?)\. Searched config paths", first_line)
        if missing:
            first_line = f"included gin file {missing.group(1)!r} not found"
        where = re.search(r'In (?:file|bindings string) "?([^",\n]+)"?, line (\d+)', message)
        if where:
            return ConfigError(f"{self._pretty(where.group(1))}:{where.group(2)}: {first_line}")

        macro = re.search(r"'(\w+)/gin\.macro'|^(\w+)/macro\.value", message)
        if macro:
            name = macro.group(1) or macro.group(2)
            if "REQUIRED" in message:
                where = self._last_binding(lambda key, value: key == name)
                return ConfigError(f"{where}: macro {name} is required: "
                                   f"set it with --gin.{name}=...")
            where = self._last_binding(lambda key, value: re.search(rf"%{name}\b", value))
            return ConfigError(f"{where}: macro %{name} is never defined")

        required = re.search(r"Required bindings for `(\w+)` not provided in config: \[(.*)\]",
                             message)
        if required:
            params = [p.strip(" '") for p in required.group(2).split(",")]
            names = ", ".join(f"{required.group(1)}.{p}" for p in params)
            return ConfigError(f"required binding(s) {names} not set in any gin file or --gin flag")

        if configurable:
            return self.explain_parameter(configurable, first_line)
        if default_source is not None:
            return ConfigError(f"{self._pretty(default_source.name)}: {first_line}")
        return ConfigError(first_line)

    def explain_parameter(self, configurable: str, problem: str) -> ConfigError:
        """For a problem that starts with the parameter's name: where it (or its macro) was set."""
        parameter = re.match(r"\s*(?:\w+\.)?(\w+)", problem)
        short = configurable.split(".")[-1]
        found = parameter and self._find_binding(
            lambda key, value: key.split("/")[-1].split(".")[-2:] == [short, parameter.group(1)])
        if found is None:
            return ConfigError(f"in {configurable}: {problem}")
        key, value, where = found
        macro = re.fullmatch(r"%(\w+)", value)
        if macro:  # report where the macro got its value: that is what to edit
            where = self._last_binding(lambda k, v: k == macro.group(1))
            key = f"{macro.group(1)} (as {key})"
        return ConfigError(f"{where}: {key}: {problem}")

    def _explain_syntax(self, error, default_source: Source | None) -> ConfigError:
        if isinstance(error, SyntaxError):
            lines = [line.strip() for line in str(error.msg).splitlines() if line.strip()]
            problem, line = lines[-1], error.lineno
            name = error.filename or (default_source.name if default_source else "<config>")
        else:  # tokenize.TokenError: ('EOF in multi-line statement', (line, column))
            problem, line = error.args[0], error.args[1][0]
            name = default_source.name if default_source else "<config>"
        if name.startswith("--gin."):
            unquoted = re.search("parse (token|value)", problem)
            hint = " (quote strings: --gin.NAME=\"'text'\")" if unquoted else ""
            return ConfigError(f"{name}: cannot parse: {problem}{hint}")
        return ConfigError(f"{self._pretty(name)}:{line}: cannot parse: {problem}")

    def _bindings(self) -> Iterator[tuple[str, str, str]]:
        """(key, value, where) for each `key = value` line of the sources in parse order, with
        `configurable:` blocks expanded; the last one for a key is the one that won."""
        for source in self.sources:
            block = None
            for number, line in enumerate(source.text.splitlines(), 1):
                header = re.match(r"([\w./]+)\s*:\s*(#.*)?$", line)
                binding = re.match(r"(\s*)([\w./]+)\s*=(.*)", line)
                if header:
                    block = header.group(1)
                elif binding:
                    indented = bool(binding.group(1)) and block is not None
                    key = f"{block}.{binding.group(2)}" if indented else binding.group(2)
                    block = block if indented else None
                    where = (source.name if source.name.startswith(("--gin.", "<"))
                             else f"{self._pretty(source.name)}:{number}")
                    yield key, binding.group(3).split("#")[0].strip(), where

    def _find_binding(self, matches: Callable[[str, str], object]):
        """The last (key, value, where) that `matches(key, value)`: the binding that won."""
        return ([None] + [found for found in self._bindings() if matches(*found[:2])])[-1]

    def _last_binding(self, matches: Callable[[str, str], object]) -> str:
        return (self._find_binding(matches) or (None, None, "<config>"))[2]

    @staticmethod
    def _pretty(path: str) -> str:
        if "://" in path:
            return path  # os.path would mangle gs://bucket into gs:/bucket
        relative = os.path.relpath(path)  # short under the working directory, else absolute
        return path if relative.startswith("..") else relative


def _macro_references(value) -> Iterator[str]:
    """Names of the macros a parsed binding value reads (`%NAME`, nested in containers too)."""
    if isinstance(value, gin.config.ConfigurableReference):
        scope, selector = value.config_key
        if selector == "gin.macro":
            yield scope
    elif isinstance(value, dict):
        for item in value.items():
            yield from _macro_references(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _macro_references(item)


def _drop_python_package_reader() -> None:
    """Unregisters gin's reader of gin files inside Python packages.

    It treats an include's directory as a package name, so a folder of the working directory
    called like one of ours (`runs/`, `models/`, `data/`) is imported as a namespace package
    and crashes it (gin 0.5: `os.path.dirname(None)`). Our search paths already find every
    file on disk.
    """
    from gin import config as gin_config, resource_reader

    gin_config._FILE_READERS[:] = [
        entry for entry in gin_config._FILE_READERS
        if entry[0] is not resource_reader.system_path_reader
    ]


def _read(path: str) -> str:
    return paths.as_path(path).read_text()


def _as_gin_path(path: str) -> str:
    return str(paths.as_path(path, check=False)) if "://" in path else path


def _join(base: str, name: str) -> str:
    if "://" in base:  # a search path on a bucket
        return str(paths.as_path(base, check=False) / name)
    return os.path.join(base, name)


def _register_url_reader() -> None:
    """gin opens files with `open`; gs:// gin files (a run's config.gin, a converted model.gin,
    a search path on a bucket) are read through epath instead."""
    def readable(path: str) -> bool:
        return not paths.is_local(path) and paths.as_path(path).is_file()

    gin.config.register_file_reader(lambda path: paths.as_path(path).open("r"), readable)


_register_url_reader()


def call(config: GinConfig, fn: Callable, **kwargs):
    """Calls `fn` with its gin bindings; configuration mistakes come back as ConfigError."""
    configured = _configurable(fn)
    try:
        return configured(**kwargs)
    except (ValueError, TypeError) as error:
        explained = config.explain(error)
        if _is_config_error(error, fn):
            raise explained from error
        raise


def check_arguments(config: GinConfig, fn: Callable, check: Callable[..., None]) -> None:
    """Calls `check` with the arguments of `fn` it names, as gin binds them (macros resolved)
    or as `fn`'s defaults. gin evaluates every `@ref()` argument (a vocabulary to train, say)
    before `fn`'s body runs, so this is how plain values are validated before the slow part."""
    names = list(inspect.signature(check).parameters)
    values = bound_arguments(config, fn, names)
    if len(values) < len(names):
        return  # an unbound required argument: calling `fn` reports it
    try:
        check(**values)
    except ValueError as error:
        raise config.explain_parameter(fn.__name__, str(error)) from error


def bound_arguments(config: GinConfig, fn: Callable, names: Sequence[str]) -> dict:
    """The named arguments of `fn` as a call would receive them (gin's binding, its %MACRO
    and `@ref()` evaluated, or `fn`'s default), without calling `fn` or evaluating its other
    arguments; a name neither bound nor defaulted is left out."""
    _configurable(fn)
    bindings = gin.get_bindings(fn, resolve_references=False)
    defaults = {name: p.default for name, p in inspect.signature(fn).parameters.items()
                if p.default is not p.empty}
    values = {}
    for name in names:
        if name in bindings:
            try:  # deepcopy evaluates this binding's references, not the other arguments'
                values[name] = copy.deepcopy(bindings[name])
            except (ValueError, TypeError) as error:
                raise config.explain(error) from error
        elif name in defaults:
            values[name] = defaults[name]
    return values


def _configurable(fn: Callable) -> Callable:
    try:
        return gin.get_configurable(fn)
    except ValueError as error:  # no file imports and binds it
        raise ConfigError(f"no gin file configures {fn.__module__}.{fn.__name__} (include one "
                          "that does, e.g. a runs/*.gin file)") from error


def _is_config_error(error: BaseException, fn: Callable) -> bool:
    """Gin's own errors, and errors raised by a configurable about one of its parameters."""
    message = str(error)
    if re.search(r"gin\.macro|macro\.value|Required bindings|configurable", message.split(
            "In call to configurable")[0]):
        return True
    call_match = _CALL_MARKER.search(message)
    if not call_match:
        return False
    first = re.match(r"\s*(\w+)\b", message)
    if not first:
        return False
    try:
        parameters = inspect.signature(gin.get_configurable(fn).__wrapped__).parameters
    except (AttributeError, ValueError, TypeError):
        parameters = {}
    return first.group(1) in parameters or call_match.group(1) != fn.__name__


def write_operative_config(model_dir: str, filename: str = "config.gin") -> str:
    """Writes the config the run used (bindings that were called) atomically, on local disk
    or gs:// (an unreachable bucket fails here, in one line, before any work is done). Every
    process checks the path; only process 0 writes (one shared file, one writer)."""
    import jax

    directory = paths.as_path(model_dir)
    if jax.process_index() == 0:
        paths.ensure_dir(directory)
        paths.atomic_write_text(directory / filename,
                                gin.operative_config_str() or gin.config_str())
    return str(directory / filename)


def macro_value(name: str, default=None):
    try:
        return gin.query_parameter(f"%{name}")
    except (ValueError, KeyError):
        return default

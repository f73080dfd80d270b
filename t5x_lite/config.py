"""Gin at the edge: find and parse .gin files, turn gin's errors into one readable line, and
write the operative config. The only module besides main.py that imports gin.

Files are found relative to the working directory, then `--gin_search_paths`, then the
packaged `gin_configs/`. `--gin.NAME=VALUE` bindings are applied after the files, in order
(later wins). Any problem with the configuration raises `ConfigError`, whose message names
the binding and the file (and line) it came from; main.py prints it and exits with code 2.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
from typing import Callable, Sequence

import gin

PACKAGE_GIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gin_configs")
_CALL_MARKER = re.compile(r"\s*In call to configurable '([\w.]+)'.*", re.S)


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
        for path in self.search_paths:
            gin.add_config_file_search_path(path)
        for gin_file in gin_files:
            path = self.find(gin_file)
            self._parse(Source(path, _read(path)), lambda p=path: gin.parse_config_file(p))
        for binding in bindings:
            source = Source(f"--gin.{binding}", binding)
            self._parse(source, lambda b=binding: gin.parse_config(b))
        try:
            gin.finalize()
        except Exception as error:  # noqa: BLE001 - every gin failure becomes one line
            raise self.explain(error) from error

    def find(self, gin_file: str) -> str:
        if os.path.isabs(gin_file):
            candidates = [gin_file]
        else:
            candidates = [os.path.join(base, gin_file) for base in self.search_paths]
        for candidate in candidates:
            if os.path.isfile(candidate):
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

    # ------------------------------------------------------------------ errors
    def explain(self, error: BaseException, default_source: Source | None = None) -> ConfigError:
        """One line: `<file>:<line>: <binding>: <problem>`."""
        message = str(error)
        configurable = None
        call = _CALL_MARKER.search(message)
        if call:
            configurable = call.group(1)
            message = message[: call.start()]
        where = re.search(r'In (?:file|bindings string) "?([^",\n]+)"?, line (\d+)', message)
        first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
        if where:
            location = f"{self._pretty(where.group(1))}:{where.group(2)}"
            return ConfigError(f"{location}: {first_line}")

        macro = re.search(r"'(\w+)/gin\.macro'|^(\w+)/macro\.value", message)
        if macro:
            name = macro.group(1) or macro.group(2)
            if "REQUIRED" in message:
                where = self.locate(r"^\s*" + name + r"\s*=")
                return ConfigError(f"{where}: macro {name} is required: set it with --gin.{name}=...")
            where = self.locate("%" + name + r"\b")
            return ConfigError(f"{where}: macro %{name} is never defined")

        required = re.search(r"Required bindings for `(\w+)` not provided in config: \[(.*)\]",
                             message)
        if required:
            params = [p.strip(" '") for p in required.group(2).split(",")]
            return ConfigError(f"required binding(s) {', '.join(f'{required.group(1)}.{p}' for p in params)} "
                               "not set in any gin file or --gin flag")

        if configurable:
            parameter = re.match(r"\s*(\w+)\b", first_line)
            if parameter:
                location = self.locate_binding(configurable, parameter.group(1))
                if location:
                    return ConfigError(f"{location}: {configurable}.{parameter.group(1)}: "
                                       f"{first_line}")
            return ConfigError(f"in {configurable}: {first_line}")

        if default_source is not None:
            return ConfigError(f"{self._pretty(default_source.name)}: {type(error).__name__}: "
                               f"{first_line}")
        return ConfigError(first_line)

    def locate(self, pattern: str) -> str:
        """`file:line` of the last line matching `pattern` (the binding that won)."""
        found = "<config>"
        for source in self.sources:
            for number, line in enumerate(source.text.splitlines(), 1):
                if re.search(pattern, line):
                    found = (source.name if source.name.startswith("--gin.")
                             else f"{self._pretty(source.name)}:{number}")
        return found

    def locate_binding(self, configurable: str, parameter: str) -> str | None:
        """Where `configurable.parameter` was set, following a `%MACRO` value to its source."""
        short = configurable.split(".")[-1]
        pattern = rf"(^|[\s.]){re.escape(short)}\.{re.escape(parameter)}\s*="
        location = self.locate(pattern)
        if location == "<config>":
            return None
        value = self._value_at(pattern)
        macro = re.match(r"\s*%(\w+)", value or "")
        if macro:
            return self.locate(r"^\s*" + macro.group(1) + r"\s*=")
        return location

    def _value_at(self, pattern: str) -> str | None:
        value = None
        for source in self.sources:
            for line in source.text.splitlines():
                if re.search(pattern, line):
                    value = line.split("=", 1)[1]
        return value

    @staticmethod
    def _pretty(path: str) -> str:
        try:
            relative = os.path.relpath(path)
        except ValueError:
            return path
        return path if relative.startswith("..") else relative


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def call(config: GinConfig, fn: Callable, **kwargs):
    """Calls `fn` with its gin bindings; configuration mistakes come back as ConfigError."""
    configured = gin.get_configurable(fn)
    try:
        return configured(**kwargs)
    except (ValueError, TypeError) as error:
        explained = config.explain(error)
        if _is_config_error(error, fn):
            raise explained from error
        raise


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
    """Writes the config the run used (bindings that were called) atomically."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, filename)
    text = gin.operative_config_str() or gin.config_str()
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def macro_value(name: str, default=None):
    try:
        return gin.query_parameter(f"%{name}")
    except (ValueError, KeyError):
        return default

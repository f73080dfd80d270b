"""Paths: every file the project reads or writes, on local disk or on gs://, as `epath.Path`s.

Three facts live here and nowhere else:

- `as_path(user_string)` is the one door from a user-supplied path (a gin macro, a CLI flag) to
  an `etils.epath.Path`. `file://` URLs become local paths (epath has no `file://` backend), `~`
  is expanded, and a mangled URL (`gs:/bucket`, what `os.path.normpath` makes of `gs://bucket`)
  or an unknown scheme is refused: os-level code would otherwise create a local `./gs:`
  directory. The first path of each bucket is probed once (`check_reachable`), so a bucket that
  cannot be reached fails there, in one line naming the path, before any work is done.
- Atomic writes (`atomic_local_file`, `atomic_write_text`, `atomic_write_bytes`): on local disk,
  a temporary file in the same directory, then `os.replace`: readers see the old file or the new
  one. On gs:// there is no rename (it is copy + delete), but one object upload is atomic: the
  content is staged in a local temporary file and uploaded once, when complete, so a failed job
  publishes nothing there either.
- `is_local(path)`: file locks (filelock) only work on local disk; callers lock local paths and,
  on gs://, let one process (process 0) write each file with an atomic upload.

Remote backends come from fsspec (gcsfs for gs://: `pip install 't5x_lite[gcs]'`; no TensorFlow).
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import threading
import urllib.parse
import uuid
from typing import Iterator, Union

from etils import epath

PathLike = Union[str, os.PathLike]
REMOTE_SCHEMES = ("gs", "s3", "az", "hf")  # what epath serves (through fsspec)
TIMEOUT_ENV = "T5X_LITE_PATH_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0  # gcsfs retries a refused connection for ~35 s before it gives up
_INSTALL_HINT = {"gs": "pip install 't5x_lite[gcs]' (gcsfs)"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(/*)(.*)$", re.S)
_reachable: set[str] = set()  # buckets that answered, probed once per process
_probe_lock = threading.Lock()


class PathError(OSError):
    """A path that cannot be used: malformed, unsupported, or on a bucket that cannot be
    reached. The message is one line and names the path."""


def as_path(path: PathLike, *, check: bool = True) -> epath.Path:
    """The `epath.Path` for a user-supplied path (see the module docstring). With `check`, a
    remote path's bucket is probed the first time it is seen in this process."""
    if isinstance(path, epath.Path):
        result = path
    else:
        text = os.fspath(path)
        result = epath.Path(_normalise(text))
    if check and not is_local(result):
        check_reachable(result)
    return result


def _normalise(text: str) -> str:
    match = _URL.match(text)
    if not match:
        return os.path.expanduser(text)
    scheme, slashes, rest = match.group(1).lower(), match.group(2), match.group(3)
    if scheme == "file":
        # file:///abs/path, file:/abs/path or file://localhost/abs/path (RFC 8089); no other
        # host is on this machine. Percent-escapes (%20) are decoded.
        if slashes == "//" and rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        elif slashes in ("/", "///"):
            rest = "/" + rest
        else:
            raise PathError(f"{text}: a file URL must be file:///absolute/path")
        return urllib.parse.unquote(rest)
    if scheme in REMOTE_SCHEMES:
        if slashes != "//" or not rest or rest.startswith("/"):
            raise PathError(f"{text}: malformed URL (expected {scheme}://bucket/path)")
        return f"{scheme}://{rest}"
    if slashes:  # `http://...`, `gcs://...`: refused rather than made a local `./http:` dir
        raise PathError(f"{text}: unsupported URL scheme {scheme!r} (use a local path, "
                        f"file://, or {', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    return os.path.expanduser(text)  # a local name that merely contains a colon


def is_local(path: PathLike) -> bool:
    """True for a path on this machine's file system (where locks and renames work)."""
    text = os.fspath(path)
    return not any(text.startswith(f"{scheme}://") for scheme in REMOTE_SCHEMES)


def bucket_of(path: PathLike) -> str | None:
    """`gs://bucket` of a remote path; None for a local one."""
    text = os.fspath(path)
    if is_local(text):
        return None
    scheme, rest = text.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def check_reachable(path: PathLike, timeout_s: float | None = None) -> None:
    """Raises PathError (one line naming `path`) unless `path`'s bucket answers; local paths
    pass. A bucket that answered once is not asked again. Waits at most `timeout_s` (default
    $T5X_LITE_PATH_TIMEOUT_S, else 60 s); the backend's own retry messages are kept quiet
    while it tries, since this check reports the outcome."""
    bucket = bucket_of(path)
    if bucket is None or bucket in _reachable:
        return
    if timeout_s is None:
        timeout_s = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    outcome: dict = {}

    def probe():
        quiet = [logging.getLogger(name) for name in ("gcsfs", "fsspec", "google")]
        was = [logger.disabled for logger in quiet]
        for logger in quiet:
            logger.disabled = True
        try:
            outcome["exists"] = epath.Path(bucket).exists()
        except BaseException as error:  # noqa: BLE001 - reported below, in one line
            outcome["error"] = error
        finally:
            for logger, disabled in zip(quiet, was):
                logger.disabled = disabled

    with _probe_lock:
        if bucket in _reachable:
            return
        # A daemon thread: a backend stuck in retries cannot keep the process from exiting.
        thread = threading.Thread(target=probe, name="t5x_lite-path-check", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise PathError(f"{path}: no answer from {bucket} within {timeout_s:g} s (check "
                            f"the network and credentials; {TIMEOUT_ENV} waits longer)")
        error = outcome.get("error")
        if isinstance(error, ImportError):
            scheme = bucket.split("://")[0]
            hint = _INSTALL_HINT.get(scheme, f"install the fsspec backend for {scheme}://")
            raise PathError(f"{path}: {scheme}:// paths need an extra package: {hint}")
        if error is not None:
            detail = " ".join(str(error).split()) or "no details"
            raise PathError(f"{path}: cannot reach {bucket}: {type(error).__name__}: {detail}")
        if not outcome.get("exists"):
            raise PathError(f"{path}: {bucket} does not exist or these credentials cannot "
                            "see it")
        _reachable.add(bucket)


def ensure_dir(path: PathLike) -> epath.Path:
    """`path` as a directory that exists (a no-op prefix on object stores); returns it."""
    directory = as_path(path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def absolute(path: PathLike) -> str:
    """A string for `path` that means the same from any working directory (URLs unchanged):
    what goes into files that other runs read back (model.gin's INIT_FROM)."""
    resolved = as_path(path, check=False)
    return str(resolved) if not is_local(resolved) else os.path.abspath(resolved)


@contextlib.contextmanager
def atomic_local_file(path: PathLike) -> Iterator[str]:
    """Yields the name of a local file to write (not yet created); when the block completes,
    its content appears at `path` at once. On an error nothing appears and the file is removed.
    """
    target = as_path(path)
    local = is_local(target)
    if local:
        target.parent.mkdir(parents=True, exist_ok=True)
        directory = os.fspath(target.parent)
    else:
        import tempfile

        directory = tempfile.gettempdir()
    # A unique name (not mkstemp, whose 0600 mode the renamed file would keep).
    staging = os.path.join(directory, f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield staging
        if local:
            os.replace(staging, target)
        else:
            _upload(staging, target)
    finally:
        if os.path.lexists(staging):
            os.remove(staging)


def _upload(local_file: str, target: epath.Path) -> None:
    """One object upload (fsspec `put_file`: GCS publishes the object only once complete)."""
    import fsspec

    filesystem, remote = fsspec.core.url_to_fs(os.fspath(target))
    filesystem.put_file(local_file, remote)


@contextlib.contextmanager
def atomic_output(path: PathLike, *, binary: bool = False) -> Iterator:
    """A file object to write; `path` gets the content only if the block completes."""
    with atomic_local_file(path) as staging:
        mode = "xb" if binary else "x"
        with open(staging, mode, **({} if binary else {"encoding": "utf-8"})) as f:
            yield f


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_output(path, binary=True) as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_output(path) as f:
        f.write(text)


def atomic_write_csv(path: PathLike, rows, columns) -> None:
    """A table of dicts as CSV with a header, written whole or not at all."""
    text = io.StringIO()
    writer = csv.DictWriter(text, list(columns))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


@contextlib.contextmanager
def local_file(path: PathLike) -> Iterator[str]:
    """A local file name holding `path`'s content, for readers that need one (mmap,
    torch.load): the file itself when local, else a temporary download."""
    source = as_path(path)
    if is_local(source):
        yield os.fspath(source)
        return
    import tempfile

    import fsspec

    filesystem, remote = fsspec.core.url_to_fs(os.fspath(source))
    with tempfile.TemporaryDirectory(prefix="t5x_lite-") as directory:
        copy = os.path.join(directory, source.name)
        filesystem.get_file(remote, copy)
        yield copy

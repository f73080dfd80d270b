"""`t5x-lite launch`: run a t5x-lite command on every worker of a Cloud TPU VM slice.

The steps are gcloud's own commands, built here and run in order (`--dry_run` prints them):

1. create the slice, as a queued resource (`--queued`, polled until ACTIVE; `--spot` or
   `--reserved`) or a plain TPU VM (polled until READY), or reuse one that exists;
2. copy the code at the current commit (`git archive HEAD`) to every worker and install it
   with `pip install -e .[tpu]`;
3. run `python3 -m t5x_lite.main ARGS` on every worker, each worker's output streamed to
   its own local log file. Every argument is quoted with `shlex`, so a gin string with
   spaces, quotes, `$` or `;` reaches t5x-lite as written and the remote shell executes
   nothing of it. On a pod `train` initialises jax.distributed by itself
   (distributed.py);
4. if the run fails and the slice is gone or preempted (gcloud's state), recreate it and
   run the same command again, up to `max_restarts` times: `train` resumes from the
   checkpoints in its (gs://) MODEL_DIR;
5. `--delete` tears the slice down.

`emit_skypilot` and `emit_xpk` write the same launch for users of SkyPilot or xpk (GKE).
"""
from __future__ import annotations

import dataclasses
import hashlib
import shlex
import subprocess
import time
from typing import Callable, Sequence

from t5x_lite import paths, tpu_topology
from t5x_lite.errors import InputError

REMOTE_DIR = "t5x_lite"  # under the workers' home directories
ARCHIVE = "t5x_lite.tar.gz"
READY_STATES = {"ACTIVE", "READY"}
GONE_STATES = {"PREEMPTED", "TERMINATED", "SUSPENDED", "FAILED", "NOT_FOUND", "DELETING"}
# Hosts per slice: v4/v5p put 4 chips on a host, v5e/v6e 8 (fewer chips: one host).
CHIPS_PER_HOST = {"v4": 4, "v5p": 4, "v5e": 8, "v6e": 8}


@dataclasses.dataclass(frozen=True)
class Launch:
    tpu: str
    zone: str
    project: str | None = None
    accelerator_type: str | None = None  # needed to create; also gives the worker count
    runtime_version: str | None = None
    create: bool = False
    queued: bool = False
    spot: bool = False
    reserved: bool = False
    max_restarts: int = 3
    poll_seconds: float = 30.0
    log_dir: str = "runs/launch"

    def __post_init__(self):
        if self.create and not (self.accelerator_type and self.runtime_version):
            raise InputError("--create needs --accelerator_type and --runtime_version")
        if self.spot and self.reserved:
            raise InputError("--spot and --reserved exclude each other")

    @property
    def num_workers(self) -> int | None:
        if not self.accelerator_type:
            return None
        slice_ = tpu_topology.parse(self.accelerator_type)
        return max(1, slice_.chips_per_slice // CHIPS_PER_HOST[slice_.chip.generation])

    def gcloud(self, *words: str) -> list[str]:
        command = ["gcloud", "compute", "tpus", *words, f"--zone={self.zone}"]
        return command + ([f"--project={self.project}"] if self.project else [])


# ------------------------------------------------------------------------------ commands
def create_command(launch: Launch) -> list[str]:
    capacity = ["--spot"] if launch.spot else ["--reserved"] if launch.reserved else []
    if launch.queued:
        return launch.gcloud("queued-resources", "create", launch.tpu,
                             f"--node-id={launch.tpu}",
                             f"--accelerator-type={launch.accelerator_type}",
                             f"--runtime-version={launch.runtime_version}") + capacity
    return launch.gcloud("tpu-vm", "create", launch.tpu,
                         f"--accelerator-type={launch.accelerator_type}",
                         f"--version={launch.runtime_version}") + capacity


def state_command(launch: Launch) -> list[str]:
    if launch.queued:
        return launch.gcloud("queued-resources", "describe", launch.tpu,
                             "--format=value(state.state)")
    return launch.gcloud("tpu-vm", "describe", launch.tpu, "--format=value(state)")


def delete_command(launch: Launch) -> list[str]:
    if launch.queued:
        return launch.gcloud("queued-resources", "delete", launch.tpu, "--force", "--quiet")
    return launch.gcloud("tpu-vm", "delete", launch.tpu, "--quiet")


def ssh_command(launch: Launch, remote: str, worker: str = "all") -> list[str]:
    return launch.gcloud("tpu-vm", "ssh", launch.tpu, f"--worker={worker}",
                         f"--command={remote}")


def install_commands(launch: Launch, archive: str) -> list[list[str]]:
    """Copies the archive of the current commit to every worker and installs it there."""
    unpack = (f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf {ARCHIVE} "
              f"-C {REMOTE_DIR} && cd {REMOTE_DIR} && python3 -m pip install -q -e '.[tpu]'")
    return [launch.gcloud("tpu-vm", "scp", archive, f"{launch.tpu}:{ARCHIVE}", "--worker=all"),
            ssh_command(launch, unpack)]


def remote_command(arguments: Sequence[str]) -> str:
    """The shell line a worker runs: every argument quoted, nothing for the shell to expand."""
    return f"cd {REMOTE_DIR} && " + shlex.join(["python3", "-m", "t5x_lite.main", *arguments])


def run_commands(launch: Launch, arguments: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(log name, command) per worker (or one for all when the worker count is unknown)."""
    remote = remote_command(arguments)
    if launch.num_workers is None:
        return [("workers", ssh_command(launch, remote))]
    return [(f"worker-{i}", ssh_command(launch, remote, str(i)))
            for i in range(launch.num_workers)]


# ------------------------------------------------------------------------------ running
Runner = Callable[[list[str]], subprocess.CompletedProcess]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


class Launcher:
    """Carries out a Launch with `run` (subprocess by default; tests pass a fake gcloud on
    PATH instead); `log` reports each step."""

    def __init__(self, launch: Launch, run: Runner = _run, log: Callable[[str], None] = print):
        self.launch, self.run, self.log = launch, run, log

    def state(self) -> str:
        result = self.run(state_command(self.launch))
        if result.returncode:
            return "NOT_FOUND"
        return (result.stdout.strip().splitlines() or ["UNKNOWN"])[-1].strip()

    def ensure_ready(self) -> None:
        """Reuses a READY/ACTIVE slice; with `create`, (re)creates one that is missing,
        preempted or failed, and waits until it is up."""
        state = self.state()
        if state in READY_STATES:
            return
        if not self.launch.create:
            raise InputError(f"TPU {self.launch.tpu!r} is {state}: pass --create (with "
                             "--accelerator_type and --runtime_version) to create it")
        if state != "NOT_FOUND":
            self._check(delete_command(self.launch))
        self._check(create_command(self.launch))
        while (state := self.state()) not in READY_STATES:
            if state in {"FAILED", "SUSPENDED"}:
                raise RuntimeError(f"TPU {self.launch.tpu!r} went {state} while being created")
            self.log(f"{self.launch.tpu}: {state}, waiting")
            time.sleep(self.launch.poll_seconds)

    def install(self, archive: str) -> None:
        for command in install_commands(self.launch, archive):
            self._check(command)

    def execute(self, arguments: Sequence[str]) -> int:
        """Runs the command on every worker at once, each one's output to its log file;
        the first nonzero exit code (0 if all succeeded)."""
        directory = paths.ensure_dir(self.launch.log_dir)
        processes = []
        for name, command in run_commands(self.launch, arguments):
            self.log(shlex.join(command))
            log = (directory / f"{self.launch.tpu}-{name}.log").open("a")  # a local file
            processes.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT),
                              log))
        codes = []
        for process, log in processes:
            codes.append(process.wait())
            log.close()
        return next((code for code in codes if code), 0)

    def launch_and_run(self, arguments: Sequence[str], archive: str) -> int:
        """Steps 1-4 of the module docstring; the exit code of the last try."""
        for attempt in range(self.launch.max_restarts + 1):
            self.ensure_ready()
            self.install(archive)
            code = self.execute(arguments)
            if code == 0:
                return 0
            state = self.state()
            if state in READY_STATES or not self.launch.create:
                return code  # the command failed, not the slice
            self.log(f"{self.launch.tpu} is {state} (exit {code}); recreating and running "
                     f"again ({attempt + 1} of {self.launch.max_restarts})")
        return code

    def delete(self) -> str:
        self._check(delete_command(self.launch))
        return f"deleted {self.launch.tpu}"

    def _check(self, command: list[str]) -> None:
        self.log(shlex.join(command))
        result = self.run(command)
        if result.returncode:
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{shlex.join(command[:5])} failed: {reason}")


def code_archive(path: str) -> str:
    """The repository at HEAD as a tar.gz (what every worker installs)."""
    subprocess.run(["git", "archive", "--format=tar.gz", "-o", path, "HEAD"], check=True)
    return path


def dry_run(launch: Launch, arguments: Sequence[str], archive: str = ARCHIVE) -> list[str]:
    """Every command a launch would run, in order, none run."""
    commands = [state_command(launch)]
    if launch.create:
        commands += [create_command(launch), state_command(launch)]
    commands += install_commands(launch, archive)
    commands += [command for _, command in run_commands(launch, arguments)]
    return [shlex.join(command) for command in commands]


# ------------------------------------------------------------------------------ other launchers
def emit_skypilot(launch: Launch, arguments: Sequence[str]) -> str:
    """A SkyPilot task: the slice as the resource (one node; SkyPilot runs `setup` and `run`
    on every host of a pod), install as setup, the command as run (`sky launch -c NAME
    task.yaml`; managed spot jobs rerun it, and `train` resumes)."""
    if not (launch.accelerator_type and launch.runtime_version):
        raise InputError("--emit=skypilot needs --accelerator_type and --runtime_version")
    command = shlex.join(["python3", "-m", "t5x_lite.main", *arguments])
    return "\n".join([
        f"name: {launch.tpu}",
        "resources:",
        f"  accelerators: tpu-{launch.accelerator_type}",
        "  accelerator_args:",
        f"    runtime_version: {launch.runtime_version}",
        f"  use_spot: {'true' if launch.spot else 'false'}",
        f"  zone: {launch.zone}",
        "workdir: .",
        "setup: |",
        "  python3 -m pip install -q -e '.[tpu]'",
        "run: |",
        f"  {command}",
        ""])


def emit_xpk(launch: Launch, arguments: Sequence[str], cluster: str = "CLUSTER",
             image: str = "IMAGE") -> str:
    """The `xpk workload create` line for a GKE cluster with TPU node pools."""
    if not launch.accelerator_type:
        raise InputError("--emit=xpk needs --accelerator_type")
    command = shlex.join(["python3", "-m", "t5x_lite.main", *arguments])
    return shlex.join(["xpk", "workload", "create", f"--cluster={cluster}",
                       f"--workload={launch.tpu}", f"--tpu-type={launch.accelerator_type}",
                       "--num-slices=1", f"--docker-image={image}",
                       f"--max-restarts={launch.max_restarts}", f"--zone={launch.zone}",
                       f"--command={command}"]) + "\n"


def sweep_executor(template: Launch, archive: str, log: Callable[[str], None] = print):
    """A sweep runner's `execute` (sweeps/runner.py) that runs each trial's stages on the
    trial's own slice, `<template.tpu>-<hash of the trial directory>`, created on first
    use; `execute.created` lists the slices, for deleting them when the sweep ends."""
    created: list[str] = []

    def execute(arguments: Sequence[str], log_path: str) -> tuple[int, str]:
        trial = log_path.rsplit("/", 1)[0]
        name = f"{template.tpu}-{hashlib.sha1(trial.encode()).hexdigest()[:8]}"
        if name not in created:
            created.append(name)
        launch = dataclasses.replace(template, tpu=name, create=True)
        code = Launcher(launch, log=log).launch_and_run(arguments, archive)
        error = f"exit {code} on {name}: see {launch.log_dir}/{name}-worker-*.log"
        return code, "" if code == 0 else error

    execute.created = created
    return execute

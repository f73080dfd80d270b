"""Running a sweep's trials: each stage its own `t5x-lite` process, so no gin state (or jax
state) passes from one trial to the next.

A trial's directory holds `trial.json` (its bindings, seed, and the status of each stage:
done or failed with the error's last line) and one directory and log per stage. A rerun
skips trials whose stages are all done, and reruns the rest from their first unfinished
stage: a training stage resumes from the checkpoints in its MODEL_DIR by itself. A failed
stage stops its trial, never the sweep. `parallel` trials run at once (each a process
chain: mind the cores); a `launcher` (launch.py) runs each stage elsewhere instead.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import shlex
import subprocess
import sys
from typing import Callable, Sequence

from t5x_lite import paths
from t5x_lite.sweeps import spec

STATUS_FILE = "trial.json"
PROGRAM = (sys.executable, "-m", "t5x_lite.main")


@dataclasses.dataclass
class Outcome:
    trial: spec.Trial
    status: str  # done | failed | skipped (already done) | planned (dry run)
    error: str | None = None


def trial_dir(output_dir: str, trial: spec.Trial) -> str:
    return str(paths.as_path(output_dir) / trial.sweep.name / trial.name)


def read_status(directory: str) -> dict:
    path = paths.as_path(directory) / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _write_status(directory: str, trial: spec.Trial, stages: dict) -> None:
    record = {"name": trial.name, "values": dict(trial.values), "seed": trial.seed,
              "stages": stages,
              "status": ("failed" if any(s["status"] == "failed" for s in stages.values()) else
                         "done" if len(stages) == len(trial.sweep.stages) and all(
                             s["status"] == "done" for s in stages.values()) else "running")}
    paths.atomic_write_text(paths.as_path(directory) / STATUS_FILE, json.dumps(record, indent=1))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:400] if lines else "no output"


def run_local(arguments: Sequence[str], log_path: str) -> tuple[int, str]:
    """Runs `t5x-lite ARGUMENTS` here; writes its output to `log_path`; (exit code, the
    error's last line or '')."""
    process = subprocess.run([*PROGRAM, *arguments], capture_output=True, text=True)
    paths.atomic_write_text(paths.as_path(log_path), process.stdout + process.stderr)
    return process.returncode, _last_line(process.stderr) if process.returncode else ""


def run_trial(trial: spec.Trial, output_dir: str,
              execute: Callable[[Sequence[str], str], tuple[int, str]] = run_local) -> Outcome:
    directory = trial_dir(output_dir, trial)
    previous = read_status(directory).get("stages", {})
    if previous and all(previous.get(s.name, {}).get("status") == "done"
                        for s in trial.sweep.stages):
        return Outcome(trial, "skipped")
    paths.ensure_dir(paths.as_path(directory))
    stages = {name: s for name, s in previous.items() if s.get("status") == "done"}
    for stage in trial.sweep.stages:
        if stage.name in stages:
            continue
        arguments = spec.stage_command(trial, stage, directory)
        code, error = execute(arguments, f"{directory}/{stage.name}.log")
        stages[stage.name] = {"status": "done" if code == 0 else "failed", "exit_code": code,
                              "command": shlex.join(["t5x-lite", *arguments])}
        if code:
            stages[stage.name]["error"] = error
            _write_status(directory, trial, stages)
            return Outcome(trial, "failed", f"{stage.name}: {error}")
        _write_status(directory, trial, stages)
    return Outcome(trial, "done")


def run_sweep(sweep: spec.Sweep, output_dir: str, *, parallel: int = 1, dry_run: bool = False,
              execute: Callable[[Sequence[str], str], tuple[int, str]] = run_local,
              log: Callable[[str], None] = print) -> list[Outcome]:
    """Runs every trial not yet done (`dry_run`: prints each stage's full command)."""
    selected = spec.trials(sweep)
    log(spec.describe(sweep, selected))
    if dry_run:
        for trial in selected:
            directory = trial_dir(output_dir, trial)
            for stage in sweep.stages:
                log(shlex.join(["t5x-lite", *spec.stage_command(trial, stage, directory)]))
        return [Outcome(trial, "planned") for trial in selected]
    if parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {parallel}")
    outcomes = []
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        futures = [pool.submit(run_trial, trial, output_dir, execute) for trial in selected]
        for future in futures:
            outcome = future.result()
            outcomes.append(outcome)
            log(f"{outcome.status:>7}  {outcome.trial.name}"
                + (f": {outcome.error}" if outcome.error else ""))
    return outcomes

"""Multi-process start-up: `jax.distributed.initialize`, called before anything touches a device.

Every process of a multi-host job runs the same command. How they find each other:

- flags: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (any subset;
  jax fills in the rest where it can detect the cluster);
- `--distributed=auto` (the default) with no flags: initialize with no arguments, letting jax
  detect everything, when the environment says this is one process of a multi-host job: a
  Cloud TPU VM (TPU chips attached), a TPU pod or multi-slice job announcing its workers
  (`TPU_WORKER_HOSTNAMES`, `MEGASCALE_COORDINATOR_ADDRESS`), or `JAX_COORDINATOR_ADDRESS`;
  otherwise stay a single process;
- `--distributed=on`: always initialize (e.g. under SLURM or Open MPI, which jax detects);
- `--distributed=off`: never.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

import jax

MODES = ("auto", "on", "off")
logger = logging.getLogger(__name__)


def _tpu_chips_attached() -> bool:
    """Whether Cloud TPU chips are on the PCI bus (jax's own probe: reads /sys, no device use)."""
    try:
        from jax._src import hardware_utils
    except ImportError:  # a jax without the probe: rely on the environment variables
        return False
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def cluster_detected(environ: Mapping[str, str] | None = None,
                     tpu_chips_attached=_tpu_chips_attached) -> bool:
    """True where `jax.distributed.initialize()` finds the coordinator by itself."""
    environ = os.environ if environ is None else environ
    if environ.get("JAX_COORDINATOR_ADDRESS") or environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    if len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
        return True
    # A Cloud TPU VM: jax reads the workers from the metadata server (unless told not to).
    return environ.get("TPU_SKIP_MDS_QUERY") is None and tpu_chips_attached()


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, mode: str = "auto",
               environ: Mapping[str, str] | None = None) -> bool:
    """Joins this process to a multi-process job if asked (see the module docstring).

    Returns whether jax.distributed is initialized. Calling it again in the same process
    (several commands in one Python session) keeps the existing job if it agrees with the
    arguments.
    """
    if mode not in MODES:
        raise ValueError(f"distributed mode must be one of {MODES}, got {mode!r}")
    given = {name: value for name, value in (("coordinator_address", coordinator_address),
                                             ("num_processes", num_processes),
                                             ("process_id", process_id)) if value is not None}
    if mode == "off":
        if given:
            raise ValueError(f"--distributed=off contradicts {', '.join(sorted(given))}")
        return False
    if mode == "auto" and not given and not cluster_detected(environ):
        return False
    if jax.distributed.is_initialized():
        _check_same_job(num_processes, process_id)
        return True
    logger.info("jax.distributed.initialize(%s)",
                ", ".join(f"{k}={v!r}" for k, v in given.items()))
    jax.distributed.initialize(**given)
    return True


def _check_same_job(num_processes: int | None, process_id: int | None) -> None:
    if num_processes is not None and num_processes != jax.process_count():
        raise ValueError(f"jax.distributed already runs {jax.process_count()} processes, "
                         f"not num_processes={num_processes}")
    if process_id is not None and process_id != jax.process_index():
        raise ValueError(f"jax.distributed already runs this as process "
                         f"{jax.process_index()}, not process_id={process_id}")

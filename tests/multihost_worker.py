"""One process of the 2-process CPU job in test_multihost.py.

    python tests/multihost_worker.py PROCESS_ID PORT NUM_PROCESSES COMMANDS.json RESULTS.json

Runs the argv lists of COMMANDS.json ({name: argv}) through the real CLI
(`t5x_lite.main.main`) with this process's `--coordinator_address/--num_processes/
--process_id`, all in one Python process: jax.distributed is initialized once (by the first
command) and later commands keep that job. Writes [{name, argv, rc, stdout, seconds}] to
RESULTS.json after every command and stops at the first failure (the other process would
wait in a collective that never completes).
"""
import contextlib
import io
import json
import os
import sys
import time

DEVICES_PER_PROCESS = 4


def main(process_id: int, port: int, num_processes: int, commands_path: str,
         results_path: str) -> int:
    # Before jax is imported: fake CPU devices, and gloo for collectives across processes.
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    from t5x_lite import main as cli

    with open(commands_path) as f:
        commands = json.load(f)
    flags = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
             f"--process_id={process_id}"]
    results = []
    for name, argv in commands.items():
        stdout, start = io.StringIO(), time.perf_counter()
        with contextlib.redirect_stdout(stdout):
            rc = cli.main(argv[:1] + flags + argv[1:] + ["--verbose"])
        results.append({"name": name, "argv": argv, "rc": rc, "stdout": stdout.getvalue(),
                        "seconds": round(time.perf_counter() - start, 1)})
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    process_id, port, num_processes = (int(a) for a in sys.argv[1:4])
    sys.exit(main(process_id, port, num_processes, *sys.argv[4:6]))

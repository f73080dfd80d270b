"""A stand-in for `gcloud compute tpus ...` (tests/test_launch.py puts it on PATH as `gcloud`).

It appends its argv to $FAKE_GCLOUD_LOG (a JSON list per line) and keeps each slice's state
in $FAKE_GCLOUD_STATE-<name>: create writes PROVISIONING, which the next describe turns into
ACTIVE (queued resources) or READY (TPU VMs); delete removes it; describe of no slice exits
1. `tpu-vm scp` copies into $FAKE_GCLOUD_HOME; `tpu-vm ssh --command=...` runs the command with bash in $FAKE_GCLOUD_HOME, as a worker
would; while $FAKE_GCLOUD_PREEMPTIONS (a file holding a number) is above 0, a t5x_lite run
instead preempts the slice (state PREEMPTED, exit 255) and counts one down.
"""
import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys

argv = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(argv) + "\n")
verb = argv[3] if len(argv) > 3 else ""
state = pathlib.Path(f"{os.environ['FAKE_GCLOUD_STATE']}-{argv[4]}")  # per slice name
queued = argv[2] == "queued-resources"

if verb == "create":
    state.write_text("PROVISIONING")
elif verb == "describe":
    if not state.exists():
        print("ERROR: (gcloud) NOT_FOUND", file=sys.stderr)
        sys.exit(1)
    current = state.read_text()
    if current == "PROVISIONING":
        state.write_text("ACTIVE" if queued else "READY")
    print(current)
elif verb == "scp":  # scp SOURCE NAME:DEST: into the (one, shared) worker home
    source, target = [a for a in argv[4:] if not a.startswith("--")]
    shutil.copy(source, pathlib.Path(os.environ["FAKE_GCLOUD_HOME"]) / target.split(":", 1)[1])
elif verb == "delete":
    state.unlink(missing_ok=True)
elif verb == "ssh":
    command = next(a.split("=", 1)[1] for a in argv if a.startswith("--command="))
    preemptions = pathlib.Path(os.environ["FAKE_GCLOUD_PREEMPTIONS"])
    with open(preemptions, "r+") as counter:  # workers run at once: one takes the preemption
        fcntl.flock(counter, fcntl.LOCK_EX)
        left = int(counter.read() or 0)
        if "t5x_lite.main" in command and left > 0:
            counter.seek(0)
            counter.truncate()
            counter.write(str(left - 1))
            state.write_text("PREEMPTED")
            print("Connection closed: the TPU was preempted", file=sys.stderr)
            sys.exit(255)
    sys.exit(subprocess.run(["bash", "-c", command], cwd=os.environ["FAKE_GCLOUD_HOME"]).returncode)

"""`t5x-lite launch` against a fake gcloud (tests/fake_gcloud.py): the exact commands, the
quoting of the remote command, creation and polling, a preemption mid-run and the rerun."""
import json
import os
import pathlib
import shlex
import stat
import sys

import pytest

from t5x_lite import launch, main

GOLDEN = pathlib.Path(__file__).parent / "golden"
NASTY = ["train", "--gin_file=runs/pretrain_decoder.gin",
         "--gin.MODEL_DIR='gs://bucket/run one'",
         "--gin.NOTE='it''s $HOME; rm -rf / & echo \"hi\" `id` $(id)'"]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A PATH with `gcloud` (the fake) and `python3` (records what a worker was asked to
    run); returns a helper to read what happened."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    home.mkdir()
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f"#!{sys.executable}\n" + (pathlib.Path(__file__).parent /
                                                 "fake_gcloud.py").read_text())
    python3 = bin_dir / "python3"
    python3.write_text(f"#!{sys.executable}\nimport json, sys\n"  # pip install: a no-op
                       "if sys.argv[1:3] == ['-m', 't5x_lite.main']:\n"
                       f"    open({str(tmp_path / 'ran.jsonl')!r}, 'a').write("
                       "json.dumps(sys.argv[1:]) + '\\n')\n")
    for script in (gcloud, python3):
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "preemptions").write_text("0")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_LOG", str(tmp_path / "gcloud.jsonl"))
    monkeypatch.setenv("FAKE_GCLOUD_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("FAKE_GCLOUD_HOME", str(home))
    monkeypatch.setenv("FAKE_GCLOUD_PREEMPTIONS", str(tmp_path / "preemptions"))

    class Fake:
        root = tmp_path

        @staticmethod
        def calls():
            path = tmp_path / "gcloud.jsonl"
            return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []

        @staticmethod
        def ran():
            path = tmp_path / "ran.jsonl"
            return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []

    return Fake


def launch_args(fake, *extra):
    return ["launch", "--tpu=pod", "--zone=us-east5-b", "--project=proj",
            "--accelerator_type=v5litepod-16", "--runtime_version=v2-alpha-tpuv5-lite",
            "--poll_seconds=0", f"--log_dir={fake.root / 'logs'}", *extra, "--", *NASTY]


def test_the_remote_shell_runs_the_command_exactly_as_given(fake):
    remote = launch.remote_command(NASTY)
    assert shlex.split(remote)[3:] == ["python3", "-m", "t5x_lite.main", *NASTY]
    assert main.main(launch_args(fake, "--create", "--queued", "--spot")) == 0
    # Each of the 2 workers' shell ran python3 with the arguments intact, nothing expanded.
    assert fake.ran() == [["-m", "t5x_lite.main", *NASTY]] * 2
    logs = sorted(p.name for p in (fake.root / "logs").glob("*.log"))
    assert logs == ["pod-worker-0.log", "pod-worker-1.log"]


def test_create_poll_install_and_run_are_these_gcloud_commands(fake):
    assert main.main(launch_args(fake, "--create", "--queued", "--spot")) == 0
    zone = ["--zone=us-east5-b", "--project=proj"]
    calls = fake.calls()
    assert calls[:4] == [
        ["compute", "tpus", "queued-resources", "describe", "pod", "--format=value(state.state)",
         *zone],
        ["compute", "tpus", "queued-resources", "create", "pod", "--node-id=pod",
         "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite", *zone,
         "--spot"],
        ["compute", "tpus", "queued-resources", "describe", "pod", "--format=value(state.state)",
         *zone],  # PROVISIONING: polled again
        ["compute", "tpus", "queued-resources", "describe", "pod", "--format=value(state.state)",
         *zone]]
    scp, install, *runs = calls[4:]
    assert scp[:6] == ["compute", "tpus", "tpu-vm", "scp", str(fake.root / "logs" /
                                                               "t5x_lite.tar.gz"), "pod:t5x_lite.tar.gz"]
    assert "--worker=all" in scp and "pip install -q -e '.[tpu]'" in install[6]
    assert sorted(r[5] for r in runs) == ["--worker=0", "--worker=1"]
    assert all(r[6] == "--command=" + launch.remote_command(NASTY) for r in runs)


def test_a_preemption_mid_run_recreates_the_slice_and_reruns_the_same_command(fake):
    (fake.root / "preemptions").write_text("1")
    assert main.main(launch_args(fake, "--create")) == 0
    calls = fake.calls()
    verbs = [c[3] for c in calls]
    runs = [c for c in calls if c[3] == "ssh" and "t5x_lite.main" in c[6]]
    # Run 1: one worker is preempted, the other finishes; the slice is PREEMPTED, so it is
    # deleted, created, polled, the code installed, and both workers run again.
    assert verbs.count("create") == 2 and verbs.count("delete") == 1
    assert verbs.index("delete") > verbs.index("ssh")
    assert len(runs) == 4 and sorted(runs[:2]) == sorted(runs[2:])  # the same command
    assert fake.ran() == [["-m", "t5x_lite.main", *NASTY]] * 3


def test_a_failing_command_on_a_healthy_slice_is_not_retried(fake):
    (fake.root / "bin" / "python3").write_text(  # the install works, every run fails
        '#!/bin/sh\n[ "$2" = t5x_lite.main ] && exit 7\nexit 0\n')
    assert main.main(launch_args(fake, "--create")) == 7
    assert [c[3] for c in fake.calls()].count("create") == 1


def test_an_absent_slice_without_create_is_one_line(fake, capsys):
    assert main.main(launch_args(fake)) == 2
    err = capsys.readouterr().err
    assert "TPU 'pod' is NOT_FOUND: pass --create" in err and len(err.splitlines()) == 1


def test_dry_run_prints_every_command_and_runs_none(fake, capsys):
    assert main.main(launch_args(fake, "--create", "--reserved", "--dry_run")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert fake.calls() == [] and len(lines) == 7
    assert lines[1].startswith("gcloud compute tpus tpu-vm create pod ") and \
        lines[1].endswith("--reserved")
    assert shlex.split(lines[-1])[7] == "--command=" + launch.remote_command(NASTY)


def test_delete_tears_the_slice_down(fake):
    assert main.main(["launch", "--tpu=pod", "--zone=z", "--delete"]) == 0
    assert fake.calls() == [["compute", "tpus", "tpu-vm", "delete", "pod", "--quiet", "--zone=z"]]


@pytest.mark.parametrize("emit, golden", [("skypilot", "skypilot_task.yaml"),
                                          ("xpk", "xpk_command.txt")])
def test_emitted_skypilot_and_xpk_match_the_golden_files(emit, golden, capsys):
    args = ["launch", "--tpu=pod", "--zone=us-east5-b", "--accelerator_type=v5litepod-16",
            "--runtime_version=v2-alpha-tpuv5-lite", "--spot", f"--emit={emit}", "--", *NASTY]
    assert main.main(args) == 0
    assert capsys.readouterr().out == (GOLDEN / golden).read_text()


def test_a_sweep_runs_each_trial_on_its_own_slice_and_deletes_them(fake, capsys):
    (fake.root / "s.toml").write_text("""
name = "tpu"
[[stage]]
name = "train"
command = "train"
gin_files = ["runs/pretrain_decoder.gin"]
[axes.lr]
LEARNING_RATE = [1e-3, 3e-3]
""")
    out = fake.root / "out"
    args = ["sweep", f"--sweep_file={fake.root / 's.toml'}", f"--output_dir={out}",
            "--launch=tpu", "--tpu_prefix=lr", "--zone=z", "--accelerator_type=v5litepod-8",
            "--runtime_version=v2-alpha-tpuv5-lite", "--poll_seconds=0"]
    assert main.main(args) == 0
    assert "--output_dir" in capsys.readouterr().err  # local: warned, gs:// is what pods share
    calls = fake.calls()
    created = [c[4] for c in calls if c[3] == "create"]
    assert len(created) == 2 and len(set(created)) == 2
    assert all(name.startswith("lr-") for name in created)
    rates = sorted(a for r in fake.ran() for a in r if a.startswith("--gin.LEARNING_RATE"))
    assert rates == ["--gin.LEARNING_RATE=0.001", "--gin.LEARNING_RATE=0.003"]
    assert all(any(a.startswith(f"--gin.MODEL_DIR='{out}/tpu/") for a in r) for r in fake.ran())
    assert sorted(c[4] for c in calls if c[3] == "delete") == sorted(created)

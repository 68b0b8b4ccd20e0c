"""The flow runs DVC in its own process (flows/pipeline.py): a stage's command, started by DVC on the flow's
file descriptors, must see the stage's environment and have its output caught, as a `dvc repro` process
with `capture_output` had it; and the flow's own environment and output must be back afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

from flows.pipeline import _stage_process_io
from srvau.tracking.runs import ENV_PARENT

# What DVC does with a stage's command: a child process on the flow's own stdout and stderr.
CHILD = ("import os, sys\n"
         f"print('out', os.environ.get({ENV_PARENT!r}), os.environ.get('MLFLOW_RUN_ID'), flush=True)\n"
         "print('err: the stage failed', file=sys.stderr, flush=True)\n")


def test_a_stage_command_gets_the_stage_environment_and_its_output_is_caught(monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "the-callers-run")  # the stage opens a child of the pipeline's run instead
    monkeypatch.delenv(ENV_PARENT, raising=False)
    env_before = dict(os.environ)
    fds_before = [os.fstat(fd).st_ino for fd in (1, 2)]

    with _stage_process_io("pipeline-run-1") as caught:
        subprocess.run([sys.executable, "-c", CHILD], check=True)
        os.write(1, b"from the flow process itself\n")  # its fd 1 (pytest, not DVC, swaps sys.stdout)

    (text,) = caught
    assert "out pipeline-run-1 None" in text  # parent run id set, MLFLOW_RUN_ID dropped
    assert "err: the stage failed" in text  # stderr too: a failed stage's error ends up in the flow's message
    assert "from the flow process itself" in text
    assert dict(os.environ) == env_before
    assert [os.fstat(fd).st_ino for fd in (1, 2)] == fds_before


def test_the_environment_and_output_come_back_when_the_stage_raises(monkeypatch):
    monkeypatch.delenv(ENV_PARENT, raising=False)
    env_before = dict(os.environ)
    fds_before = [os.fstat(fd).st_ino for fd in (1, 2)]
    try:
        with _stage_process_io("pipeline-run-2") as caught:
            subprocess.run([sys.executable, "-c", CHILD], check=True)
            raise KeyboardInterrupt  # Ctrl-C while DVC runs the stage
    except KeyboardInterrupt:
        pass
    assert "out pipeline-run-2" in caught[0]
    assert ENV_PARENT not in os.environ and dict(os.environ) == env_before
    assert [os.fstat(fd).st_ino for fd in (1, 2)] == fds_before

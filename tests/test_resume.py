"""Resume and preemption, end to end, with real processes (tests/resume_script.py).

- SIGKILL mid-run (right after an asynchronous save was started), then resume: the final
  params equal, bit for bit, those of an uninterrupted run of the same seed.
- SIGTERM mid-run: the next step boundary saves and the process exits cleanly, both with
  a plain signal handler and with JAX's preemption service under `jax.distributed`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from jaxkd.checkpoint import Checkpointer, restore_student

SCRIPT = Path(__file__).with_name("resume_script.py")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
TIMEOUT_S = 300


def _script_module():
    spec = importlib.util.spec_from_file_location("resume_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=ENV,
    )


def test_sigkill_mid_run_resumes_to_identical_params(tmp_path):
    run, reference = tmp_path / "run", tmp_path / "reference"
    killed = _run(str(run), "--steps", "12", "--kill-at", "9")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "step 9" in killed.stdout and "step 10" not in killed.stdout
    assert not (run / "final.npz").exists()

    resumed = _run(str(run), "--steps", "12", "--reference", str(reference))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Saves every 3 steps; step 9's save may or may not have finished before the kill.
    start = int(re.search(r"resumed (\d+)", resumed.stdout).group(1))
    assert start in (6, 9)
    final, expected = np.load(run / "final.npz"), np.load(reference / "final.npz")
    assert sorted(final.files) == ["b1", "b2", "w1", "w2"]
    for name in expected.files:
        np.testing.assert_array_equal(final[name], expected[name])
    # Training moved the params, so equality above is not that of two initialisations.
    initial = _script_module().init_state().params
    assert not np.array_equal(final["w1"], np.asarray(initial["w1"]))
    assert not [p for p in (run / "checkpoints").iterdir() if "tmp" in p.name]


@pytest.mark.parametrize(
    "distributed",
    [
        False,
        pytest.param(
            True,
            # JAX's preemption sync point is agreed through the coordination service; on a
            # heavily loaded 2-core CI machine it has been seen not to arrive in time.
            marks=pytest.mark.skipif(
                os.environ.get("CI") == "true", reason="timing-sensitive under CI load"
            ),
        ),
    ],
    ids=["signal", "jax_distributed"],
)
def test_sigterm_saves_at_next_step_and_exits_cleanly(tmp_path, distributed):
    run = tmp_path / "run"
    command = [sys.executable, str(SCRIPT), str(run), "--steps", "1000", "--step-sleep", "0.05"]
    if distributed:
        command.append("--distributed")
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=ENV
        )
        watchdog = threading.Timer(TIMEOUT_S, process.kill)
        watchdog.start()
        try:
            lines = []
            for line in process.stdout:
                lines.append(line)
                if line.strip() == "step 2":
                    process.send_signal(signal.SIGTERM)
                    break
            lines.extend(process.stdout)
            process.wait()
        finally:
            watchdog.cancel()
    output = "".join(lines)
    assert process.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    stopped = int(re.search(r"preempted (\d+)", output).group(1))
    assert 3 <= stopped < 1000
    assert f"step {stopped + 1}\n" not in output
    # The stop step was saved although it is not a multiple of the save interval (3)...
    assert int(restore_student(run)["step"]) == stopped
    # ...together with the data position, so the run resumes on the right batch.
    script = _script_module()
    iterator = iter(script.make_dataset().to_iter_dataset(script.READ_OPTIONS))
    with Checkpointer(run) as ckpt:
        assert ckpt.latest_step() == stopped
        state = ckpt.restore(script.init_state(), data_iterator=iterator)
    assert int(state.step) == stopped
    assert iterator.get_state() == {"next_index": stopped}

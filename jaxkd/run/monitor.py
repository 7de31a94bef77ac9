"""What a run reports while it trains: `metrics.jsonl`, TensorBoard events, a progress bar.

Train metrics stay on the device between log steps and are fetched once per log window,
so logging never forces a host round trip per step. On resume, events past the restored
step (written after the last checkpoint of an interrupted run) are dropped from
`metrics.jsonl`, and TensorBoard purges them (`purge_step`), so the logs read as one run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import tqdm
from etils import epath
from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
logger = logging.getLogger("jaxkd.run")


def read_events(workdir: epath.PathLike, *, event: str | None = None) -> list[dict[str, Any]]:
    """The events of a run's `metrics.jsonl`, in order (optionally only one kind).

    Args:
      workdir: the run's workdir.
      event: "train", "eval", "start", or None for all.

    Returns:
      One dict per line: `{"event": ..., "step": ..., <metrics>}`.

    References:
      JSON Lines, https://jsonlines.org.
    """
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if event is None or e.get("event") == event]


def _keep_until(path: epath.Path, step: int) -> None:
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def _mean_rows(arrays: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, float]:
    return {k: float(np.mean(v[start:stop])) for k, v in arrays.items()}


class RunLog:
    """The side effects of reporting: JSON lines, TensorBoard scalars, a tqdm bar.

    Only process 0 writes. Train metrics are averaged over each window of
    `log_every_steps` steps (whatever the number of steps per call: one when streaming, a
    whole epoch in memory), so both data paths log the same events.

    Args:
      workdir: the run's workdir.
      start_step: the step the run starts (or resumes) from.
      num_steps: the last step of the run.
      steps_per_epoch: steps per epoch (events carry `epoch = step / steps_per_epoch`).
      log_every_steps: train log window; 0 logs no train events.
      learning_rate: schedule, logged as `lr` with each train event.
      progress: show the bar; None shows it when stderr is a terminal.

    References:
      clu `metric_writers` (JSON and TensorBoard writers of the flax examples); tqdm.
    """

    def __init__(
        self,
        workdir: epath.PathLike,
        *,
        start_step: int,
        num_steps: int,
        steps_per_epoch: int,
        log_every_steps: int,
        learning_rate: Callable[[int], Any],
        progress: bool | None = None,
    ) -> None:
        self.writer = jax.process_index() == 0
        self._spe, self._every, self._lr = steps_per_epoch, int(log_every_steps), learning_rate
        self._last = self._window_start = start_step
        self._pending: list[dict[str, np.ndarray]] = []
        self._train_time, self._mark = 0.0, time.perf_counter()
        self._rate_step, self._rate_time = start_step, 0.0
        self._postfix: dict[str, str] = {}
        self._file = self._tb = None
        if self.writer:
            path = epath.Path(workdir) / METRICS_FILE
            _keep_until(path, start_step)
            self._file = path.open("a")
            self._tb = SummaryWriter(
                str(epath.Path(workdir) / TENSORBOARD_DIR),
                purge_step=start_step + 1 if start_step else None,
            )
        show = sys.stderr.isatty() if progress is None else progress
        self._bar = tqdm.tqdm(
            total=num_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=not (show and self.writer),
        )

    @property
    def train_time(self) -> float:
        """Seconds spent in training calls so far (evaluation and checkpoints excluded)."""
        return self._train_time

    def pause(self) -> None:
        """Stops the training clock (before evaluating or checkpointing)."""
        self._train_time += time.perf_counter() - self._mark
        self._mark = None

    def resume(self) -> None:
        """Restarts the training clock."""
        if self._mark is None:
            self._mark = time.perf_counter()

    def write(self, event: str, step: int, values: Mapping[str, Any]) -> None:
        """Appends one event to `metrics.jsonl` and its numbers to TensorBoard."""
        if not self.writer:
            return
        record = {"event": event, "step": int(step), "epoch": step / self._spe, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if event in ("train", "eval"):
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{event}/{key}", value, int(step))

    def train(self, metrics: Mapping[str, jax.Array], *, steps: int) -> None:
        """Records `steps` train steps' metrics (scalars, or arrays `[steps]`)."""
        now = time.perf_counter()
        self._train_time += now - (self._mark or now)
        self._mark = now
        first, self._last = self._last, self._last + steps
        self._bar.update(steps)
        if not self._every:
            return
        self._pending.append(dict(metrics))
        if self._last // self._every == first // self._every:
            return
        host = jax.device_get(self._pending)
        rows = {k: np.concatenate([np.reshape(p[k], (-1,)) for p in host]) for k in host[0]}
        rate = (self._last - self._rate_step) / max(self._train_time - self._rate_time, 1e-9)
        self._rate_step, self._rate_time = self._last, self._train_time
        start = self._window_start
        for boundary in range(first // self._every + 1, self._last // self._every + 1):
            stop = boundary * self._every
            values = _mean_rows(rows, start - self._window_start, stop - self._window_start)
            values.update(lr=float(self._lr(stop)), steps_per_sec=rate)
            self.write("train", stop, values)
            start = stop
            self._postfix["loss"] = f"{values['loss']:.4g}"
        cut = start - self._window_start
        self._pending = [{k: v[cut:] for k, v in rows.items()}]
        self._window_start = start
        self._bar.set_postfix(self._postfix, refresh=False)

    def eval(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records an evaluation."""
        self.write("eval", step, metrics)
        if self._tb is not None:
            self._tb.flush()
        self._postfix["acc"] = f"{metrics['accuracy']:.4f}"
        self._bar.set_postfix(self._postfix)
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "count")
        logger.info("step %d (epoch %.2f) eval: %s", step, step / self._spe, text)

    def close(self) -> None:
        """Flushes and closes the files and the bar."""
        self._bar.close()
        if self._file is not None and not self._file.closed:
            self._file.close()
            self._tb.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

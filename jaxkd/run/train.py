"""The outer loop: `train_and_evaluate(config, workdir)` trains, evaluates, logs and checkpoints.

It reads top to bottom: build the experiment, place it on the mesh, resume, compile, then
loop over epochs (or steps), evaluating and checkpointing at epoch ends. Every side effect
of a run (files, progress, signals) lives here; the step it calls is pure.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
import time
from typing import Any

import jax
import ml_collections
from etils import epath

from jaxkd import engine, parallel
from jaxkd.checkpoint import Checkpointer
from jaxkd.experiment.build import build
from jaxkd.run import monitor, steps

SUMMARY_FILE = "summary.json"
# Metrics where lower is better; any other `best_metric` is maximised.
_LOWER_IS_BETTER = ("loss", "kl")


def _count(tree: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def _best(evals: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    ranked = [e for e in evals if metric in e]
    if not ranked:
        return None
    pick = max if mode == "max" else min
    return pick(ranked, key=lambda e: e[metric])


def _strip(event: dict[str, Any] | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {k: v for k, v in event.items() if k not in ("event", "epoch")}


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    data_dir: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Trains the experiment of `config` in `workdir`, resuming from its last checkpoint.

    Evaluates every `config.eval_every_epochs` epochs and at the end (accuracy, loss and,
    with a teacher, teacher accuracy, agreement and KL(teacher‖student)); logs train
    metrics every `config.log_every_steps` steps to `metrics.jsonl` and TensorBoard;
    checkpoints every `config.checkpoint.every_epochs` epochs (the latest
    `max_to_keep` plus the best by `best_metric`). SIGTERM saves at the next step (an
    epoch in memory) and returns with `preempted` set.

    Args:
      config: the experiment config (`jaxkd.experiment.config` schema).
      workdir: the run's directory (checkpoints, logs, `summary.json`).
      data_dir: TFDS data dir (overrides `config.data.data_dir`).
      progress: show a progress bar; None shows it when stderr is a terminal.

    Returns:
      `{"final": eval metrics, "best": eval metrics at the best step (with "step"),
      "params", "teacher_params", "step", "num_steps", "steps_per_epoch", "preempted",
      "wall_time_s", "train_time_s", "compile_time_s", "steps_per_sec", "workdir"}`,
      also written to `workdir/summary.json`.

    References:
      flax `examples/imagenet/train.py` (`train_and_evaluate`); big_vision trainers.
    """
    started = time.perf_counter()
    workdir = epath.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    exp = build(config, data_dir=data_dir, workdir=str(workdir))
    spe, num_steps, in_memory = exp.steps_per_epoch, exp.num_steps, bool(config.data.in_memory)
    mesh = parallel.make_mesh(
        None if config.mesh.data == -1 else int(config.mesh.data), int(config.mesh.fsdp)
    )

    # Resuming needs the latest steps; evaluation wants the best one: keep both.
    best_metric = config.checkpoint.best_metric
    best_mode = "min" if best_metric in _LOWER_IS_BETTER else "max"
    model_names = {"student": config.student.model}
    if config.teacher.model:
        model_names["teacher"] = config.teacher.model
    # The checkpointer (pending saves, the SIGTERM handler) and the logs are closed even
    # when a step fails.
    with contextlib.ExitStack() as cleanup:
        ckpt = cleanup.enter_context(
            Checkpointer(
                workdir,
                config=config,
                model_names=model_names,
                max_to_keep=int(config.checkpoint.max_to_keep),
                best_metric=best_metric,
                best_mode=best_mode,
                save_interval_steps=max(int(config.checkpoint.every_epochs), 1) * spe,
            )
        )
        state = parallel.shard_tree(exp.init_state(), mesh)
        teacher = None if exp.teacher is None else parallel.shard_tree(exp.teacher, mesh)
        if teacher is not None:
            # Saved once beside the steps (a no-op on resume): the run stays evaluable, and
            # resumable with the same teacher, whatever happens later to the teacher's own run.
            ckpt.save_teacher({"params": teacher.params, "state": teacher.state})
        if threading.current_thread() is threading.main_thread():
            ckpt.install_preemption_handler()
        iterator = None if in_memory else exp.train.iterator()
        latest = ckpt.latest_step()
        if latest is not None:
            _check_resumable(workdir, latest, spe, in_memory)
            state = ckpt.restore(state, data_iterator=iterator)
        start = int(state.step)

        # Compiled once, ahead of time, from the shapes of the first batch.
        compile_started = time.perf_counter()
        train_step = engine.make_train_step(
            exp.student, exp.objective, exp.optimizer, teacher=exp.teacher_config
        )
        first = exp.train.epoch(start // spe) if in_memory else exp.train.dataset[0]
        compile_fn = steps.compile_train_epoch if in_memory else steps.compile_train_step
        compiled = compile_fn(train_step, mesh, state, teacher, first)
        evaluate = steps.make_evaluator(
            engine.make_eval_step(exp.student, teacher=exp.teacher_config),
            mesh,
            state,
            teacher,
            exp.eval,
            in_memory=in_memory,
        )
        compile_time = time.perf_counter() - compile_started

        log = cleanup.enter_context(
            monitor.RunLog(
                workdir,
                start_step=start,
                num_steps=num_steps,
                steps_per_epoch=spe,
                log_every_steps=int(config.log_every_steps),
                learning_rate=exp.learning_rate,
                progress=progress,
            )
        )
        log.write(
            "start",
            start,
            {
                "student": config.student.model,
                "params": _count(state.params),
                "teacher": exp.teacher_source,
                "steps_per_epoch": spe,
                "num_steps": num_steps,
                "devices": jax.device_count(),
                "in_memory": in_memory,
            },
        )
        evals = monitor.read_events(workdir, event="eval") if log.writer else []
        eval_every = max(int(config.eval_every_epochs), 1)

        def end_of_step(step: int, state) -> bool:
            """Evaluates at due epoch ends, offers the checkpointer the step; True: stop now."""
            log.pause()
            metrics = None
            if step % spe == 0 and ((step // spe) % eval_every == 0 or step == num_steps):
                metrics = evaluate(state, teacher)
                log.eval(step, metrics)
                evals.append({"step": step, **metrics})
            ckpt.save(step, state, data_iterator=iterator, metrics=metrics, force=step == num_steps)
            log.resume()
            return ckpt.should_stop()

        trained_from = start
        preempted = False
        if in_memory:
            # The next epoch is read and put on the devices while the current one trains.
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as loader:
                load = lambda e: steps.shard_stacked(exp.train.epoch(e), mesh)
                pending = loader.submit(steps.shard_stacked, first, mesh)
                for epoch in range(start // spe, num_steps // spe):
                    batches = pending.result()
                    if epoch + 1 < num_steps // spe:
                        pending = loader.submit(load, epoch + 1)
                    state, metrics = compiled(state, teacher, batches)
                    log.train(metrics, steps=spe)
                    if end_of_step((epoch + 1) * spe, state):
                        preempted = True
                        break
        else:
            for step in range(start, num_steps):
                batch = parallel.shard_batch(next(iterator), mesh)
                state, metrics = compiled(state, teacher, batch)
                log.train(metrics, steps=1)
                if end_of_step(step + 1, state):
                    preempted = True
                    break
        log.pause()
        step = int(state.step)
        if not preempted and (not evals or evals[-1]["step"] != step):
            # A run resumed after its last step (or extended without an eval) still reports.
            metrics = evaluate(state, teacher)
            log.eval(step, metrics)
            evals.append({"step": step, **metrics})

    trained = step - trained_from
    summary = {
        "workdir": str(workdir),
        "final": _strip(evals[-1]) if evals else None,
        "best": _strip(_best(evals, best_metric, best_mode)),
        "params": _count(state.params),
        "teacher_params": None if exp.teacher is None else _count(exp.teacher.params),
        "step": step,
        "num_steps": num_steps,
        "steps_per_epoch": spe,
        "preempted": preempted,
        "wall_time_s": time.perf_counter() - started,
        "train_time_s": log.train_time,
        "compile_time_s": compile_time,
        "steps_per_sec": trained / log.train_time if trained and log.train_time else 0.0,
    }
    if log.writer:
        (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _check_resumable(workdir: epath.Path, step: int, spe: int, in_memory: bool) -> None:
    if in_memory and step % spe:
        raise ValueError(
            f"checkpoint step {step} in {workdir} is not at an epoch end ({spe} steps per "
            "epoch); in-memory training resumes at epoch ends: resume it with "
            "config.data.in_memory=False."
        )
    if not in_memory and not (workdir / "checkpoints" / str(step) / "data").exists():
        raise ValueError(
            f"checkpoint step {step} in {workdir} has no data-iterator position (it was "
            "written by an in-memory run); resume it with config.data.in_memory=True."
        )

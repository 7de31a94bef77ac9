"""`train_and_evaluate` end to end on MNIST-1D: logs, resume, both data paths, KD, eval.

One teacher run (2 epochs, in memory) is shared: a resumed run and a streaming run must
reproduce its parameters exactly, and a distillation run from it must report the
teacher's own best accuracy and round-trip through `evaluate_checkpoint`.
"""

from __future__ import annotations

import json
import os
import signal
import struct
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from jaxkd.checkpoint import restore_config, restore_student
from jaxkd.experiment.config import term
from jaxkd.run import evaluate as evaluate_lib
from jaxkd.run import evaluate_checkpoint, monitor, read_events, train_and_evaluate

STEPS_PER_EPOCH = 62  # 4,000 examples, batch 64


@pytest.fixture(scope="module")
def teacher_run(make_config, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    return workdir, train_and_evaluate(make_config(), workdir, progress=False)


@pytest.fixture(scope="module")
def kd_run(make_config, teacher_run, tmp_path_factory):
    terms = (
        term("kd", "kd", weight=0.9, hparams={"temperature": 4.0}),
        term("dkd", "dkd", weight=1.0, inputs=("label",), warmup_epochs=1.0),
        term("hint", "hint", student="stage1", teacher="stage1", adapter="hint", weight=0.5),
        term(
            "crd",
            "crd",
            student="pooled",
            teacher="pooled",
            inputs=("index",),
            adapter="embed",
            teacher_adapter="embed",
            adapter_kwargs={"feat_dim": 16},
            hparams={"num_negatives": 32},
            weight=0.8,
        ),
    )
    workdir = str(tmp_path_factory.mktemp("kd"))
    config = make_config(epochs=1, teacher=teacher_run[0], terms=terms)
    return workdir, train_and_evaluate(config, workdir, progress=False)


def _params(workdir: str, step="latest"):
    return restore_student(workdir, step=step)["params"]


def _tensorboard_tags(workdir: str) -> set[str]:
    tags = set()
    for path in Path(workdir, monitor.TENSORBOARD_DIR).glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):  # TFRecord: length, crc, payload, crc
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            tags.update(v.tag for v in event.summary.value)
            offset += 16 + length
    return tags


def test_writes_metrics_jsonl_tensorboard_and_summary(teacher_run):
    workdir, result = teacher_run
    events = read_events(workdir)
    assert [e["step"] for e in events if e["event"] == "train"] == [20, 40, 60, 80, 100, 120]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert events[0]["event"] == "start" and events[0]["params"] == result["params"]
    train = next(e for e in events if e["event"] == "train")
    assert {"loss", "loss/task", "grad_norm", "lr", "steps_per_sec"} <= set(train)
    assert train["lr"] == pytest.approx(0.05)
    assert result["final"]["accuracy"] == evals[-1]["accuracy"]
    assert result["best"]["accuracy"] == max(e["accuracy"] for e in evals)
    assert result["final"]["accuracy"] > 0.3  # above chance (0.1) after 2 epochs
    assert result["step"] == result["num_steps"] == 2 * STEPS_PER_EPOCH
    assert result["params"] == sum(x.size for x in jax.tree.leaves(_params(workdir)))
    assert result["steps_per_sec"] > 0 and not result["preempted"]
    assert json.loads(Path(workdir, "summary.json").read_text()) == result
    assert {"train/loss", "train/lr", "eval/accuracy", "eval/loss"} <= _tensorboard_tags(workdir)


def test_resume_after_interruption_matches_a_straight_run(make_config, teacher_run, tmp_path):
    workdir = str(tmp_path)
    first = train_and_evaluate(make_config(epochs=1), workdir, progress=False)
    assert first["step"] == STEPS_PER_EPOCH
    second = train_and_evaluate(make_config(epochs=2), workdir, progress=False)
    assert second["step"] == 2 * STEPS_PER_EPOCH
    chex.assert_trees_all_equal(_params(workdir), _params(teacher_run[0]))
    resumed = [(e["step"], e["accuracy"]) for e in read_events(workdir, event="eval")]
    straight = [(e["step"], e["accuracy"]) for e in read_events(teacher_run[0], event="eval")]
    assert resumed == straight


def test_streaming_preempted_by_sigterm_resumes_and_matches_in_memory(
    make_config, teacher_run, tmp_path, monkeypatch
):
    workdir = str(tmp_path)
    record = monitor.RunLog.train

    def train_then_sigterm(self, metrics, *, steps):
        record(self, metrics, steps=steps)
        if self._last == 20:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(monitor.RunLog, "train", train_then_sigterm)
    stopped = train_and_evaluate(make_config(epochs=1, in_memory=False), workdir, progress=False)
    monkeypatch.undo()
    assert stopped["preempted"] and stopped["step"] == 20
    assert restore_student(workdir)["step"] == 20

    # An in-memory run resumes at epoch ends only, and says so.
    with pytest.raises(ValueError, match="not at an epoch end"):
        train_and_evaluate(make_config(epochs=1), workdir, progress=False)

    resumed = train_and_evaluate(make_config(epochs=1, in_memory=False), workdir, progress=False)
    assert resumed["step"] == STEPS_PER_EPOCH and not resumed["preempted"]
    # Streaming batches through a grain iterator, resumed mid-epoch, and scanning over
    # whole in-memory epochs run the same step on the same batches.
    chex.assert_trees_all_close(
        _params(workdir), _params(teacher_run[0], step=STEPS_PER_EPOCH), rtol=1e-6, atol=1e-7
    )


def test_distillation_run_restores_the_teacher_and_logs_every_term(kd_run, teacher_run):
    workdir, result = kd_run
    teacher_best = teacher_run[1]["best"]["accuracy"]
    assert result["final"]["teacher_accuracy"] == pytest.approx(teacher_best)
    assert {"agreement", "kl"} <= set(result["final"])
    train = read_events(workdir, event="train")
    assert {"loss/kd", "loss/dkd", "loss/hint", "loss/crd", "loss/task"} <= set(train[0])
    assert all(np.isfinite(e["loss"]) for e in train)
    # DKD's weight warms up linearly over the first epoch.
    warmup = [e["weight/dkd"] for e in train]
    assert warmup == sorted(warmup) and 0 < warmup[0] < warmup[-1] < 1.0
    info = restore_config(workdir)
    assert info["models"] == {"student": "mnist1d_mlp_small", "teacher": "mnist1d_mlp_small"}
    assert info["teacher"]["path"] == str(Path(workdir, "teacher"))
    assert len(info["teacher"]["params_sha256"]) == 64
    start = read_events(workdir, event="start")[0]
    assert start["teacher"]["step"] == teacher_run[1]["best"]["step"]


def test_evaluate_checkpoint_round_trip(kd_run, data_dir):
    workdir, result = kd_run
    metrics = evaluate_checkpoint(workdir, step="latest", with_teacher=True, data_dir=data_dir)
    assert metrics["step"] == result["step"] and metrics["model"] == "mnist1d_mlp_small"
    for key in ("accuracy", "loss", "teacher_accuracy", "agreement", "kl", "count"):
        assert metrics[key] == pytest.approx(result["final"][key], rel=1e-5), key


def test_evaluate_checkpoint_restores_the_student_alone(kd_run, teacher_run, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher must not be read")

    monkeypatch.setattr(evaluate_lib, "restore_teacher", no_teacher)
    workdir, result = kd_run
    metrics = evaluate_checkpoint(workdir)
    assert metrics["accuracy"] == pytest.approx(result["best"]["accuracy"], rel=1e-6)
    assert "teacher_accuracy" not in metrics
    best = evaluate_checkpoint(teacher_run[0], step="best")
    assert best["step"] == teacher_run[1]["best"]["step"]
    assert best["accuracy"] == pytest.approx(teacher_run[1]["best"]["accuracy"], rel=1e-6)
    with pytest.raises(ValueError, match="holds a 'mnist1d_mlp_small' model, expected"):
        evaluate_checkpoint(teacher_run[0], model="mnist1d_cnn")
    with pytest.raises(ValueError, match="trained without a teacher"):
        evaluate_checkpoint(teacher_run[0], with_teacher=True)

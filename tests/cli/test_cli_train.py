"""`jaxkd train` and `jaxkd eval` on tiny runs: round trips, resumption, bad input."""

import json
import pathlib
import shutil

import pytest
import tensorflow_datasets as tfds

from jaxkd.cli import main
from jaxkd.run import read_events

TINY_CONFIG = pathlib.Path(__file__).with_name("tiny_mnist1d.py")
CIFAR100 = pathlib.Path(__file__).parents[2] / "experiments" / "configs" / "cifar100.py"


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_train_writes_a_run(tiny_runs):
    for name in ("teacher", "kd"):
        workdir = pathlib.Path(tiny_runs[name])
        evals = read_events(workdir, event="eval")
        assert [e["step"] for e in evals] == [4, 8]  # 512 examples / 128 per batch, 2 epochs
        assert (workdir / "checkpoints").is_dir() and (workdir / "summary.json").is_file()
    assert (pathlib.Path(tiny_runs["kd"]) / "teacher").is_dir()  # its own copy of the teacher


def test_eval_round_trip(tiny_runs, capsys):
    """The restored student scores exactly what the run measured at its best step."""
    capsys.readouterr()
    run = tiny_runs["kd"]
    assert main(["eval", "--checkpoint", run, "--split", "test[:256]", "--teacher", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    summary = json.loads((pathlib.Path(run) / "summary.json").read_text())
    assert metrics["model"] == "mnist1d_mlp_small" and metrics["count"] == 256
    assert metrics["step"] == summary["best"]["step"]
    assert metrics["accuracy"] == pytest.approx(summary["best"]["accuracy"], abs=1e-6)
    assert metrics["teacher_accuracy"] == pytest.approx(
        summary["best"]["teacher_accuracy"], abs=1e-6
    )


def test_eval_prints_a_readable_summary(tiny_runs, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", tiny_runs["teacher"], "--step", "latest"]) == 0
    header, metrics = capsys.readouterr().out.splitlines()
    assert "mnist1d_cnn_small" in header and "step 8 (latest)" in header
    assert "accuracy=" in metrics and "count=1000" in metrics


def test_resume_from_the_recorded_config(tiny_runs, tmp_path, capsys):
    """`--config` may be left out: the run's own config resumes it (here one epoch longer)."""
    workdir = tmp_path / "teacher"
    shutil.copytree(tiny_runs["teacher"], workdir)
    capsys.readouterr()
    assert main(["train", "--workdir", str(workdir), "--config.num_epochs=3"]) == 0
    assert [e["step"] for e in read_events(workdir, event="eval")] == [4, 8, 12]
    assert "12/12 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--config.teacher.model=mnist1d_mlp"], "holds a 'mnist1d_cnn_small' model, expected"),
        (["--config.data.name=mnist2d"], "'mnist2d' is not a dataset TFDS knows"),
        (["--config.student.model=mlp9"], "Unknown model 'mlp9'"),
        (["--config.objective.terms.kd.loss=kdd"], "unknown loss 'kdd'"),
        (["--config.objective.terms.kd.hparams.temperatur=2"], "unknown config key"),
    ],
)
def test_train_bad_input_is_one_line(tiny_runs, mnist1d_dir, tmp_path, capsys, arguments, message):
    capsys.readouterr()
    command = ["train", "--config", f"{TINY_CONFIG}:kd", "--workdir", str(tmp_path / "run")]
    command += [f"--config.data.data_dir={mnist1d_dir}"]
    command += [f"--config.teacher.checkpoint={tiny_runs['teacher']}", *arguments]
    assert main(command) == 2
    assert message in _one_error_line(capsys)


def test_train_without_a_teacher_run(mnist1d_dir, tmp_path, capsys):
    missing = str(tmp_path / "no_teacher")
    command = ["train", "--config", f"{TINY_CONFIG}:kd", "--workdir", str(tmp_path / "run")]
    command += [f"--config.data.data_dir={mnist1d_dir}", f"--config.teacher.checkpoint={missing}"]
    assert main(command) == 2
    assert f"config.teacher.checkpoint='{missing}' holds no finished checkpoint" in (
        _one_error_line(capsys)
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--checkpoint", "/nonexistent/run"], "is not a directory; expected the --workdir"),
        (["--checkpoint", "{kd}", "--model", "resnet8"], "holds a 'mnist1d_mlp_small' model"),
        (["--checkpoint", "{kd}", "--step", "soon"], "--step must be 'best', 'latest' or an int"),
        (["--checkpoint", "{kd}", "--step", "5"], "5"),
        (["--split", "test"], "the following arguments are required: --checkpoint"),
    ],
)
def test_eval_bad_input_is_one_line(tiny_runs, capsys, arguments, message):
    capsys.readouterr()
    assert main(["eval", *[a.format(**tiny_runs) for a in arguments]]) == 2
    assert message in _one_error_line(capsys)


def test_train_without_config_or_run(tmp_path, capsys):
    assert main(["train", "--workdir", str(tmp_path)]) == 2
    assert "--config is required" in _one_error_line(capsys)


@pytest.mark.slow
def test_cifar100_recipe_runs_on_mock_data(tmp_path, capsys):
    """A teacher run, then DKD from it, through `jaxkd train` (resnet8 both: the smallest)."""
    tiny = ["--config.data.batch_size=8", "--config.data.eval_batch_size=16"]
    tiny += ["--config.num_epochs=1", "--config.log_every_steps=1"]
    teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
    with tfds.testing.mock_data(num_examples=16):
        assert main(["train", "--config", f"{CIFAR100}:resnet8", "--workdir", teacher, *tiny]) == 0
        distill = [f"{CIFAR100}:resnet56_resnet20,crd+kd", "--workdir", student, *tiny]
        distill += ["--config.student.model=resnet8", "--config.teacher.model=resnet8"]
        distill += [f"--config.teacher.checkpoint={teacher}"]
        assert main(["train", "--config", *distill]) == 0
    (final,) = read_events(student, event="eval")
    assert final["step"] == 2 and final["count"] == 16 and 0 <= final["accuracy"] <= 1
    train = read_events(student, event="train")
    assert [e["step"] for e in train] == [1, 2]
    assert {"loss/crd", "loss/kd", "loss/task"} <= set(train[0])
    assert "2/2 steps" in capsys.readouterr().out

"""`jaxkd demo` end to end at tiny size: mock MNIST-1D splits, one epoch per run."""

import contextlib
import io
import json
import re

import pytest
import tensorflow_datasets as tfds

import jaxkd.data  # noqa: F401  (registers the `mnist1d` builder)
from jaxkd import demo
from jaxkd.cli import main as cli_main
from jaxkd.experiment import mnist1d


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    """Runs the whole demo once on random signals (300 per split), one epoch per run."""
    workdir = tmp_path_factory.mktemp("demo")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    argv = ["--workdir", str(workdir), "--data-dir", data_dir, "--epochs-scale", "0.001"]
    with tfds.testing.mock_data(num_examples=300, data_dir=data_dir):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            status = demo.main([*argv, "--no-progress"])
        eval_line = next(line for line in out.getvalue().splitlines() if "jaxkd eval" in line)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            eval_status = cli_main([*eval_line.split()[1:], "--json"])
    restored = json.loads(out.getvalue().splitlines()[-1])
    return {"status": status, "workdir": workdir, "eval_status": eval_status, "eval": restored}


def test_demo_writes_runs_table_and_curves(demo_output):
    workdir = demo_output["workdir"]
    assert demo_output["status"] == 0
    names = [run.name for run in demo.demo_runs(str(workdir))]
    assert names == [
        "teacher",
        "student_scratch",
        "student_kd_labels",
        "student_pseudo_labels",
        "student_kd_transfer",
    ]
    for name in names:
        summary = json.loads((workdir / name / "summary.json").read_text())
        assert summary["step"] == summary["num_steps"] > 0
        assert (workdir / name / "checkpoints").is_dir()
    # The students distilled from the teacher store it apart from their own steps.
    assert (workdir / "student_kd_transfer" / "teacher").is_dir()
    assert not (workdir / "student_scratch" / "teacher").exists()
    table = (workdir / demo.TABLE_FILE).read_text().splitlines()
    assert len(table) == 2 + len(names)
    assert all(re.search(r"\| \d+\.\d % \|", line) for line in table[2:])
    png = (workdir / demo.PLOT_FILE).read_bytes()
    assert png.startswith(b"\x89PNG")


def test_printed_eval_command_restores_the_student_alone(demo_output):
    workdir = demo_output["workdir"]
    assert demo_output["eval_status"] == 0
    restored = demo_output["eval"]
    summary = json.loads((workdir / "student_kd_transfer" / "summary.json").read_text())
    assert restored["model"] == "mnist1d_mlp"
    assert restored["params"] == summary["params"] == 15_210
    assert restored["accuracy"] == pytest.approx(summary["final"]["accuracy"])


def test_demo_runs_follow_the_recipes():
    runs = {run.name: run.config for run in demo.demo_runs("/tmp/unused", student="mnist1d_mlp")}
    assert runs["teacher"].student.model == mnist1d.TEACHER
    assert runs["teacher"].teacher.model == ""
    assert runs["student_scratch"].teacher.model == ""
    assert runs["student_scratch"].data.unlabeled_split == ""
    for name in ("student_kd_labels", "student_pseudo_labels", "student_kd_transfer"):
        assert runs[name].teacher.checkpoint == "/tmp/unused/teacher"
    assert runs["student_kd_labels"].data.unlabeled_split == ""
    assert runs["student_pseudo_labels"].data.unlabeled_split == "unlabeled"
    assert runs["student_kd_transfer"].data.unlabeled_split == "unlabeled"
    assert list(runs["student_pseudo_labels"].objective.terms) == ["pseudo_label"]
    assert list(runs["student_kd_transfer"].objective.terms) == ["kd"]
    assert all(c.data.in_memory for c in runs.values())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--epochs-scale", "0"], "--epochs-scale must be > 0"),
        (["--student", "resnet8"], "invalid choice"),
    ],
)
def test_demo_rejects_bad_arguments(argv, message, capsys):
    assert cli_main(["demo", *argv]) == 2
    assert message in capsys.readouterr().err

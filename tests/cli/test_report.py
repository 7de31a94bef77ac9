"""`jaxkd report`: the table, the learning-curve PNG, and the measurements behind them."""

import json

import pytest
from matplotlib import image

from jaxkd import report
from jaxkd.cli import main
from jaxkd.run import read_events


def test_report_table_and_png(tiny_runs, tmp_path, capsys):
    out = tmp_path / "plots" / "report.png"
    capsys.readouterr()
    command = ["report", tiny_runs["teacher"], tiny_runs["kd"], "--out", str(out)]
    assert main([*command, "--batch-size", "8", "--repeats", "2"]) == 0
    header, rule, teacher_row, kd_row, footer = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["run", "model", "params"] and "ms/batch (8)" in header
    assert set(rule.replace(" ", "")) == {"-"}
    assert footer == f"learning curves: {out}"

    def best(run):
        return max(e["accuracy"] for e in read_events(run, event="eval"))

    # run, model, params, FLOPs, ms, best, final, teacher, teacher acc
    cells = teacher_row.split()
    assert cells[:3] == [tiny_runs["teacher"], "mnist1d_cnn_small", "858"]
    assert cells[5] == f"{100 * best(tiny_runs['teacher']):.2f}" and cells[7:] == ["-", "-"]
    cells = kd_row.split()
    assert cells[:3] == [tiny_runs["kd"], "mnist1d_mlp_small", "2.7K"]
    assert cells[5] == f"{100 * best(tiny_runs['kd']):.2f}"
    assert cells[7] == "mnist1d_cnn_small"
    teacher_accuracy = read_events(tiny_runs["kd"], event="eval")[-1]["teacher_accuracy"]
    assert cells[8] == f"{100 * teacher_accuracy:.2f}"
    assert float(cells[4]) > 0

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = image.imread(out).shape
    assert height > 100 and width > 100


def test_report_of_a_missing_run(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "does not exist; expected the --workdir of a `jaxkd train` run" in line


def test_read_curves(tmp_path):
    events = [
        {"event": "start", "step": 0, "epoch": 0.0, "student": "m"},
        {"event": "train", "step": 5, "epoch": 0.5, "loss": 2.0},
        {"event": "train", "step": 10, "epoch": 1.0, "loss": 1.5},
        {"event": "eval", "step": 10, "epoch": 1.0, "accuracy": 0.5, "teacher_accuracy": 0.9},
        {"event": "eval", "step": 20, "epoch": 2.0, "accuracy": 0.4, "teacher_accuracy": 0.9},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    curves = report.read_curves(tmp_path)
    assert (curves.train_epochs, curves.train_loss) == ([0.5, 1.0], [2.0, 1.5])
    assert (curves.eval_epochs, curves.eval_accuracy) == ([1.0, 2.0], [0.5, 0.4])
    assert curves.teacher_accuracy == 0.9


def test_read_curves_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl does not exist"):
        report.read_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"event": "eval"}\nnot json\n')
    with pytest.raises(ValueError, match="not JSON"):
        report.read_curves(tmp_path)


def test_profile_counts_an_mlp():
    """40 → 32 → 32 → 10: 2,624 multiply-adds (2 FLOPs each for XLA) plus elementwise ops."""
    profile = report.profile_model(
        "mnist1d_mlp_small", {}, num_classes=10, input_shape=(40,), batch_size=4, repeats=2
    )
    assert profile.params == 40 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert 2 * 2624 <= profile.flops <= 1.1 * 2 * 2624
    assert profile.latency_s > 0 and profile.batch_size == 4


def test_format_table_alignment():
    curves = report.Curves([], [], None, [], [])
    profile = report.Profile(params=1_234_567, flops=2.5e9, latency_s=0.0123, batch_size=64)
    rows = [
        report.RunRow("runs/a", "resnet8x4", profile, 0.7331, 0.73, "resnet32x4", 0.7942, curves),
        report.RunRow("b", "m", profile, None, None, None, None, curves),
    ]
    lines = report.format_table(rows).splitlines()
    assert len({len(line) for line in lines}) == 1  # one width for every line
    assert lines[2].split() == [
        "runs/a", "resnet8x4", "1.23M", "2.5G", "12.30", "73.31", "73.00", "resnet32x4", "79.42"
    ]  # fmt: skip
    assert lines[3].split()[-4:] == ["-", "-", "-", "-"]

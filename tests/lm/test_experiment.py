"""experiments/lm_distill.py's tiny config: the table, and the teacher reused by a rerun."""

import json

import pytest
from _lm_helpers import texts

from jaxkd.cli_config import load_config
from jaxkd.lm.experiment import markdown_table, run_lm_distill


@pytest.fixture(scope="module")
def tiny():
    config = load_config("experiments/configs/lm_distill.py:tiny")
    with config.unlocked():
        config.modes = ["offline_topk"]
        config.cold_modes = []
    return config


@pytest.mark.slow
def test_tiny_experiment_writes_the_table_and_reuses_its_teacher(tmp_path, tiny):
    corpus = (texts(12, seed=0), texts(3, seed=1))
    results = run_lm_distill(tiny, str(tmp_path), texts=corpus)
    rows = results["students"]
    assert list(rows) == ["offline_topk"]
    for row in [results["teacher"], *rows.values()]:
        assert row["bits_per_byte"] > 0 and row["params"] > 0
        assert row["train_tokens_per_second"] > 0
    assert results["teacher"]["params"] > 3 * rows["offline_topk"]["params"]
    cache = rows["offline_topk"]["cache"]
    assert cache["k"] == 8 and 0 <= cache["kl_compression"] < 1e-2
    table = (tmp_path / "results.md").read_text()
    # Header, teacher, student, then a blank line and the warm start's score.
    assert table.count("\n") == 2 + 1 + 1 + 2 and "student: offline_topk" in table
    assert "CE warm start (2 steps)" in table
    assert json.loads((tmp_path / "results.json").read_text())["table"] == table
    # A second run reloads the teacher (and would reuse the cache) instead of retraining.
    stamp = (tmp_path / "teacher" / "lm_model.json").stat().st_mtime_ns
    with tiny.unlocked():
        tiny.modes = []
    again = run_lm_distill(tiny, str(tmp_path), texts=corpus)
    assert again["teacher"]["bits_per_byte"] == pytest.approx(results["teacher"]["bits_per_byte"])
    assert (tmp_path / "teacher" / "lm_model.json").stat().st_mtime_ns == stamp


def test_markdown_table_formats_rows():
    row = {
        "params": 1234,
        "bits_per_byte": 2.5,
        "train_tokens_per_second": 10.0,
        "tokens_per_second": 20.0,
    }
    table = markdown_table(row, {"scratch": row})
    assert "| teacher | 1,234 | 2.500 | 10 | 20 |" in table
    assert "| student: scratch |" in table


def test_markdown_table_shows_no_rate_for_an_untimed_split():
    # A one-batch held-out split has no timed batch (the first compiles): "–", not "nan".
    row = {
        "params": 1,
        "bits_per_byte": 2.5,
        "train_tokens_per_second": 10.0,
        "tokens_per_second": float("nan"),
    }
    table = markdown_table(row, {})
    assert "| teacher | 1 | 2.500 | 10 | – |" in table
    assert "nan" not in table


def test_markdown_table_puts_cold_and_warm_starts_side_by_side():
    def row(bits, speed):
        return {
            "params": 10,
            "bits_per_byte": bits,
            "train_tokens_per_second": speed,
            "tokens_per_second": 5.0,
        }

    table = markdown_table(
        row(1.0, 1.0),
        {"reverse_kl": row(2.5, 7.0), "gkd": row(2.25, 8.0)},
        cold={"reverse_kl": row(3.5, 9.0), "scratch": row(2.0, 6.0)},
        warm_start={"steps": 300, "bits_per_byte": 2.75},
    )
    lines = table.splitlines()
    assert "from random init" in lines[0] and "from the CE warm start" in lines[0]
    assert lines[1] == "|---|---:|---:|---:|---:|---:|"
    assert lines[2] == "| teacher | 10 | 1.000 | – | 1 | 5 |"
    assert lines[3] == "| student: reverse_kl | 10 | 3.500 | 2.500 | 9 | 5 |"  # cold speeds
    assert lines[4] == "| student: gkd | 10 | – | 2.250 | 8 | 5 |"
    assert lines[5] == "| student: scratch | 10 | 2.000 | – | 6 | 5 |"
    assert lines[-1] == "CE warm start (300 steps): 2.750 bits/byte."

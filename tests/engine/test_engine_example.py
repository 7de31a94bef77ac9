"""docs/engine_example.py (the README's "use the engine in your own loop") runs and learns."""

from __future__ import annotations

import pathlib
import runpy

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "engine_example.py"


def test_engine_example_runs_and_the_student_learns(capsys):
    example = runpy.run_path(str(EXAMPLE), run_name="engine_example")
    results = example["main"](steps=40)
    assert results["count"] == 500.0  # the padded last batch counts its real rows only
    assert results["accuracy"] > 0.5 and results["agreement"] > 0.5  # chance is 0.1
    assert results["teacher_accuracy"] > 0.5
    assert "test:" in capsys.readouterr().out

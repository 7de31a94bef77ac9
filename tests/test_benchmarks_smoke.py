"""benchmarks/step.py runs end to end at a tiny size and reports consistent numbers."""

from __future__ import annotations

import importlib.util
import json
import math
import runpy

import pytest
from _benchmarks import BENCHMARKS, load_benchmark

STEP = BENCHMARKS / "step.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None
SIDES = ["jax", "torch"] if HAS_TORCH else ["jax"]
TINY = [
    "--pair",
    "resnet8:resnet8",
    "--batch",
    "4",
    "--image-size",
    "8",
    "--num-classes",
    "10",
    "--rounds",
    "2",
    "--iters",
    "2",
    "--warmup",
    "1",
]


@pytest.fixture(scope="module")
def bench():
    return runpy.run_path(str(STEP), run_name="benchmark_step")


@pytest.fixture(scope="module")
def result(bench, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "step.json"
    results = bench["main"]([*TINY, "--json", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    (result,) = results
    return result


def test_times_and_ratios_are_consistent(result):
    times = result["times"]
    expected = {f"{s}/{c}" for s in SIDES for c in ("distill", "floor")}
    expected |= {f"{s}/floor/{p}" for s in SIDES for p in ("teacher_forward", "student_step")}
    assert set(times) == expected
    for stats in times.values():
        assert stats["n"] == 2 * 2  # rounds x iters
        assert 0 < stats["min_ms"] <= stats["median_ms"] and math.isfinite(stats["mean_ms"])
    ratios = result["ratios"]
    for side in SIDES:
        floor = times[f"{side}/floor"]["median_ms"]
        assert ratios[f"{side}_step_over_floor"] == times[f"{side}/distill"]["median_ms"] / floor
    if HAS_TORCH:
        torch_ms = times["torch/distill"]["median_ms"]
        assert ratios["jax_over_torch"] == times["jax/distill"]["median_ms"] / torch_ms
    else:
        assert "jax_over_torch" not in ratios and result["torch_version"] is None


def test_memory_of_the_step_includes_the_teacher(result):
    compiled = result["memory"]["jax_compiled"]
    step, alone = compiled["distill"], compiled["student_step"]
    # The step's arguments add the teacher's variables to the student step's.
    assert step["arguments"] > alone["arguments"] > 0
    # The donated state is written in place, so the outputs are (almost) all aliased.
    assert step["aliased"] > 0.9 * step["outputs"]
    for stats in (step, alone):
        total = stats["arguments"] + stats["outputs"] + stats["temporaries"] - stats["aliased"]
        assert stats["peak_estimate"] == total
        assert stats["transient"] == total - stats["arguments"]
    faulted = result["memory"]["faulted_bytes"]
    assert set(faulted) == {f"{s}/{c}" for s in SIDES for c in ("distill", "student_step")}
    assert all(v >= 0 for v in faulted.values())
    if HAS_TORCH:
        peaks = result["memory"]["torch_peak_allocated"]
        # Both steps allocate the student's activations and gradients.
        assert peaks["distill"] > 0 and peaks["student_step"] > 0


@pytest.mark.skipif(not HAS_TORCH, reason="the PyTorch column needs torch (benchmark extra)")
def test_pytorch_runs_the_same_network(result):
    check = result["check"]
    # Same weights and batch: the first step's losses and the teacher's logits agree.
    assert check["torch_first_distill_loss"] == pytest.approx(
        check["jax_first_distill_loss"], rel=1e-4
    )
    assert check["torch_first_student_loss"] == pytest.approx(
        check["jax_first_student_loss"], rel=1e-4
    )
    assert check["teacher_logits_rel_diff"] < 1e-5


def test_table_names_every_row(bench, result):
    text = bench["format_result"](result)
    for row in (
        "teacher forward",
        "student train step",
        "floor",
        "distillation step",
        "step / floor",
    ):
        assert row in text
    assert "jaxkd: peak = arguments + outputs + temporaries" in text
    assert ("PyTorch: the step's own memory" in text) == HAS_TORCH


def test_bad_pair_is_refused(bench):
    with pytest.raises(SystemExit):
        bench["parse_args"](["--pair", "resnet8"])


def test_rounds_alternate_their_order():
    measure = load_benchmark("_measure")
    calls = []
    cases = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    times = measure.interleaved(cases, rounds=3, iters=2, warmup=1)
    assert "".join(calls) == "ABC" + "AABBCC" + "CCBBAA" + "AABBCC"
    assert {k: len(v) for k, v in times.items()} == {"A": 6, "B": 6, "C": 6}
    with pytest.raises(ValueError, match="rounds"):
        measure.interleaved(cases, rounds=0, iters=1, warmup=0)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch (benchmark extra)")
def test_copying_weights_into_a_different_network_is_refused():
    from flax import nnx

    from jaxkd import engine
    from jaxkd.models import create_model

    torch_models = load_benchmark("_torch_models")
    jax_model = engine.from_nnx(create_model("resnet8", num_classes=10, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="only in torch"):
        torch_models.load_jax_variables(
            torch_models.create_model("resnet14", 10), jax_model.params, jax_model.state
        )
    with pytest.raises(ValueError, match=r"fc\.(weight|bias): torch shape"):
        torch_models.load_jax_variables(
            torch_models.create_model("resnet8", 100), jax_model.params, jax_model.state
        )

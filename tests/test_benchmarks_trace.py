"""benchmarks/trace.py attributes a compiled step's time to XLA:CPU operations."""

from __future__ import annotations

import subprocess
import sys

from _benchmarks import BENCHMARKS, load_benchmark

TRACE = BENCHMARKS / "trace.py"


def test_kinds_of_xla_cpu_operations():
    kind = load_benchmark("trace").kind
    assert kind("transpose_copy_fusion.23") == "layout transposes and copies"
    assert kind("convolution-base-dilated.3") == "convolutions"
    assert kind("conv_general_dilated.30") == "convolutions"
    assert kind("ynn_fusion.19") == "YNNPACK fusions (dots, reductions)"
    assert kind("add_maximum_fusion.2") == "other fusions (element-wise)"
    assert kind("ThunkExecutor::Execute") is None


def test_trace_of_a_tiny_train_step():
    # A fresh process: XLA reads the trace flag only when JAX starts its CPU client.
    argv = ["--pair", "resnet8:resnet8", "--batch", "2", "--calls", "1", "--top", "3"]
    out = subprocess.run(
        [sys.executable, str(TRACE), *argv], capture_output=True, text=True, check=True
    ).stdout
    assert "resnet8:resnet8 student_step, batch 2" in out
    # The per-operation events are there: convolutions were traced by name.
    kinds = {line.split(" | ")[0].strip("| ") for line in out.splitlines() if "%" in line}
    assert "convolutions" in kinds and "not attributed (library kernels, dispatch)" in kinds

"""Where one compiled jaxkd function spends its time on CPU: XLA's own per-operation trace.

    python benchmarks/trace.py                                     # resnet8x4 train step
    python benchmarks/trace.py --pair resnet56:resnet20 --case distill --top 20

Builds the same compiled functions as `benchmarks/step.py` (`distill`, `student_step`,
`teacher_forward`), runs the chosen one under `jax.profiler` with XLA:CPU's per-operation
trace events turned on (`--xla_cpu_enable_xprof_traceme`), and prints the wall time per call,
the traced time per call by kind of operation (layout transposes, convolutions, YNNPACK
fusions, other fusions) and the most expensive operations. Operations run inside a library
kernel without an event of their own are not in the kinds: the "not attributed" row is the
rest of the call.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = ("student_step", "teacher_forward", "distill")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student")
    parser.add_argument("--case", default="student_step", choices=CASES)
    parser.add_argument("--calls", type=int, default=3, help="traced calls")
    parser.add_argument("--top", type=int, default=12, help="operations listed")
    parser.add_argument("--batch", type=int, default=64)
    return parser.parse_args(argv)


def kind(name: str) -> str | None:
    """The kind of an XLA:CPU trace event, or None for events that are not operations."""
    if name.startswith(("transpose", "copy")):
        return "layout transposes and copies"
    if "convolution" in name or name.startswith("conv_general"):
        return "convolutions"
    if name.startswith("ynn_fusion"):
        return "YNNPACK fusions (dots, reductions)"
    if "fusion" in name:
        return "other fusions (element-wise)"
    return None


def summarize(events: list[dict], calls: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Milliseconds per call by kind, and per operation (most expensive first)."""
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and "dur" in event and kind(event["name"]) is not None:
            per_op[event["name"]] += event["dur"] / 1e3 / calls
    by_kind: collections.Counter[str] = collections.Counter()
    for name, ms in per_op.items():
        by_kind[kind(name)] += ms
    return dict(by_kind), per_op.most_common()


def main(argv: list[str] | None = None) -> dict:
    """Traces the case, prints the tables; returns {"wall_ms", "traced_ms", "by_kind", "ops"}."""
    args = parse_args(argv)
    sys.path.insert(0, HERE)
    from jaxkd import xla_cpu

    xla_cpu.configure_cpu()
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    ).strip()
    import jax
    import step

    step_args = step.parse_args(["--pair", args.pair, "--batch", str(args.batch)])
    batch = step._make_batch(step_args)
    run = step.jax_side(step_args, *args.pair.split(":"), batch)["run"][args.case]
    for _ in range(2):
        run()
    start = time.perf_counter()
    for _ in range(args.calls):
        run()
    wall_ms = 1e3 * (time.perf_counter() - start) / args.calls
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        for _ in range(args.calls):
            run()
        traced_ms = 1e3 * (time.perf_counter() - start) / args.calls
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    by_kind, ops = summarize(events, args.calls)
    print(
        f"{args.pair} {args.case}, batch {args.batch}: {wall_ms:.1f} ms per call, "
        f"{traced_ms:.1f} ms traced"
    )
    print("\n| kind | ms per traced call | share |\n|---|---:|---:|")
    for name, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {ms:.1f} | {ms / traced_ms:.0%} |")
    rest = traced_ms - sum(by_kind.values())
    print(f"| not attributed (library kernels, dispatch) | {rest:.1f} | {rest / traced_ms:.0%} |")
    print("\n| operation | ms per call |\n|---|---:|")
    for name, ms in ops[: args.top]:
        print(f"| {name} | {ms:.1f} |")
    return {"wall_ms": wall_ms, "traced_ms": traced_ms, "by_kind": by_kind, "ops": ops}


if __name__ == "__main__":
    main()

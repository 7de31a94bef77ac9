"""The markdown tables `benchmarks/step.py` prints for one teacher:student pair."""

from __future__ import annotations

from typing import Any

MIB = 2**20


def _cell(stats: dict, name: str) -> str:
    if name not in stats:
        return "—"
    s = stats[name]
    return f"{s['median_ms']:.1f} / {s['mean_ms']:.1f}"


def _mib(x: float | None) -> str:
    return "n/a" if x is None else f"{x / MIB:.1f}"


def format_result(result: dict[str, Any]) -> str:
    """The markdown tables (time, memory) and the check line of one `run_pair` result."""
    teacher, student = result["pair"].split(":")
    s, r, m = result["times"], result["ratios"], result["memory"]
    torch_note = (
        "PyTorch not run"
        if result["torch_version"] is None
        else f"torch {result['torch_version']} (threads: {result['torch_threads']}, "
        f"{'channels_last' if result['channels_last'] else 'NCHW'})"
    )
    size = result["image_size"]
    lines = [
        f"## {teacher} -> {student}, batch {result['batch']}, {size}x{size}x3, "
        f"{result['num_classes']} classes, teacher {result['teacher_dtype']}",
        "",
        f"jax {result['jax_version']} ({result['backend']}, cores: {result['cores']}, "
        f"XLA_FLAGS={result['xla_flags']!r}), {torch_note}; load average "
        f"{result['load_average']['before']} -> {result['load_average']['after']}",
        "",
        "| ms per call: median / mean | jaxkd | PyTorch |",
        "|---|---|---|",
        f"| teacher forward (eval) | {_cell(s, 'jax/floor/teacher_forward')} "
        f"| {_cell(s, 'torch/floor/teacher_forward')} |",
        f"| student train step (CE + SGD) | {_cell(s, 'jax/floor/student_step')} "
        f"| {_cell(s, 'torch/floor/student_step')} |",
        f"| floor: the two above, back to back | {_cell(s, 'jax/floor')} "
        f"| {_cell(s, 'torch/floor')} |",
        f"| distillation step (one call) | {_cell(s, 'jax/distill')} "
        f"| {_cell(s, 'torch/distill')} |",
        f"| step / floor (goal <= 1.05) | {_ratio(r, 'jax_step_over_floor')} "
        f"| {_ratio(r, 'torch_step_over_floor')} |",
        f"| jaxkd / PyTorch, step (goal <= 1.0) | {_ratio(r, 'jax_over_torch')} | |",
        "",
        "| memory, MiB | distillation step | student step alone | ratio |",
        "|---|---|---|---|",
    ]
    compiled = m["jax_compiled"]
    rows = (
        ("arguments", "jaxkd: arguments (state, teacher, batch)"),
        ("temporaries", "jaxkd: temporaries"),
        ("outputs", "jaxkd: outputs"),
        ("aliased", "jaxkd: outputs written into donated inputs"),
        ("peak_estimate", "jaxkd: peak = arguments + outputs + temporaries − aliased"),
        ("transient", "jaxkd: the step's own memory = peak − arguments"),
    )
    if compiled["distill"] is not None and compiled["student_step"] is not None:
        for key, label in rows:
            a, b = compiled["distill"][key], compiled["student_step"][key]
            lines.append(f"| {label} | {_mib(a)} | {_mib(b)} | {_div(a, b)} |")
    if "torch_peak_allocated" in m:
        a, b = m["torch_peak_allocated"]["distill"], m["torch_peak_allocated"]["student_step"]
        lines.append(
            f"| PyTorch: the step's own memory = peak allocated above its start (profiler) "
            f"| {_mib(a)} | {_mib(b)} | {_div(a, b)} |"
        )
    faults = m["faulted_bytes"]
    for side, label in (("jax", "jaxkd"), ("torch", "PyTorch")):
        if f"{side}/distill" in faults:
            a, b = faults[f"{side}/distill"], faults[f"{side}/student_step"]
            lines.append(
                f"| {label}: fresh pages faulted in per step "
                f"| {_mib(a)} | {_mib(b)} | {_div(a, b)} |"
            )
    c = result["check"]
    lines += ["", f"first-step loss: jaxkd {c['jax_first_distill_loss']:.5f}"]
    if "torch_first_distill_loss" in c:
        lines[-1] += (
            f", PyTorch {c['torch_first_distill_loss']:.5f} (same weights); teacher logits "
            f"max |jaxkd − PyTorch| / max |jaxkd| = {c['teacher_logits_rel_diff']:.1e}"
        )
    return "\n".join(lines)


def _ratio(r: dict, key: str) -> str:
    return f"{r[key]:.3f}" if key in r else "—"


def _div(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "n/a"

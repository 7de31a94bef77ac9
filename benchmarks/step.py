"""Time and memory of one jaxkd distillation step, against its floor and against PyTorch.

    python benchmarks/step.py                                   # resnet56 -> resnet20, batch 64
    python benchmarks/step.py --pair resnet56:resnet20 --pair resnet32x4:resnet8x4
    python benchmarks/step.py --batch 128 --rounds 10 --iters 5 --json results.json

For each teacher:student pair, on one batch of random CIFAR-sized images, it times in one
process, in interleaved rounds (A, B, C, D, then D, C, B, A, ...):

- jaxkd's distillation step: teacher forward (eval mode) + student forward/backward (train
  mode) + KD + cross-entropy + SGD with momentum, one `jax.jit` function, state donated;
- the floor: the same teacher forward alone, then the student's plain train step
  (cross-entropy + SGD) alone, each jit-compiled on its own, run back to back;
- the same distillation step and floor written directly in PyTorch (eval-mode teacher under
  `torch.no_grad`, RepDistiller's `DistillKL`, `torch.optim.SGD`), with the same number of
  threads, starting from the same weights (copied from the jaxkd models, which also checks
  that the two networks compute the same loss).

It prints a table of the median and mean time per call, the ratios step / floor (goal
<= 1.05) and jaxkd / PyTorch (goal <= 1.0 on CPU), and the memory of the step against the
student step alone: XLA's compiled memory analysis (exact: XLA plans every buffer ahead),
for PyTorch the peak of its allocator's events recorded by the profiler, and for both the
fresh pages a step faults in. The PyTorch column is skipped when torch is not installed
(`pip install -e '.[benchmark]'`). docs/benchmarks.md has results and their reading.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _measure import cpu_count, faulted_bytes, interleaved, load_average, summarize
from _report import format_result

from jaxkd import engine, losses, xla_cpu
from jaxkd.models import create_model
from jaxkd.objective import Objective, Term

# RepDistiller's KD recipe for CIFAR-100: loss = 0.1 · CE + 0.9 · KD(T = 4), SGD 0.05,
# momentum 0.9, weight decay 5e-4.
TEMPERATURE, KD_WEIGHT, CE_WEIGHT = 4.0, 0.9, 0.1
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `--pair` defaults to resnet56:resnet20."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pair",
        action="append",
        help="teacher:student model names (repeatable); default resnet56:resnet20",
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--iters", type=int, default=5, help="timed calls per case per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per case first")
    parser.add_argument(
        "--teacher-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the teacher's params and compute dtype (both frameworks)",
    )
    parser.add_argument("--threads", type=int, default=cpu_count(), help="PyTorch intra-op threads")
    parser.add_argument(
        "--channels-last", action="store_true", help="PyTorch in NHWC (channels_last) layout"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the PyTorch profiler's memory pass"
    )
    parser.add_argument(
        "--xla-defaults",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="jaxkd's XLA:CPU flags (jaxkd.xla_cpu); --no-xla-defaults runs XLA's own",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.pair = args.pair or ["resnet56:resnet20"]
    for pair in args.pair:
        if pair.count(":") != 1:
            parser.error(f"--pair must be teacher:student, got {pair!r}")
    return args


def _make_batch(args: argparse.Namespace) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(args.seed)
    size = args.image_size
    return {
        "inputs": rng.normal(size=(args.batch, size, size, 3)).astype(np.float32),
        "label": rng.integers(0, args.num_classes, args.batch).astype(np.int32),
        "mask": np.ones(args.batch, np.float32),
    }


def _memory_analysis(compiled: Any) -> dict[str, int] | None:
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    out = {
        "arguments": stats.argument_size_in_bytes,
        "outputs": stats.output_size_in_bytes,
        "temporaries": stats.temp_size_in_bytes,
        "aliased": stats.alias_size_in_bytes,
    }
    out["transient"] = out["outputs"] + out["temporaries"] - out["aliased"]
    out["peak_estimate"] = out["arguments"] + out["transient"]
    return out


def jax_side(
    args: argparse.Namespace, teacher_name: str, student_name: str, batch: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Builds and compiles the three jaxkd functions (distillation step, and the floor's two).

    The distillation step is `engine.make_train_step` with a KD term and the task loss,
    compiled by `engine.jit_train_step` (state donated); the student step alone is the same
    builder with the task loss only; the teacher forward is `engine.teacher_outputs`, the
    very function the step runs first.

    Args:
      args: the parsed command line.
      teacher_name: registry name of the teacher (`jaxkd.models.create_model`).
      student_name: registry name of the student.
      batch: `inputs` NHWC float32, `label` int32, `mask`.

    Returns:
      `run` (name -> call that runs one step to completion), `memory` (name -> XLA's
      compiled memory analysis) and `models` (the initial teacher and student `Model`s).
    """
    dtype = jnp.bfloat16 if args.teacher_dtype == "bfloat16" else None
    classes = args.num_classes
    teacher = engine.from_nnx(create_model(teacher_name, num_classes=classes, rngs=nnx.Rngs(0)))
    student = engine.from_nnx(create_model(student_name, num_classes=classes, rngs=nnx.Rngs(1)))
    config = engine.TeacherConfig(apply=teacher.apply, dtype=dtype)
    frozen = engine.freeze_teacher(teacher, dtype=dtype)
    objective = Objective(
        terms=[Term("kd", losses.kd, hparams={"temperature": TEMPERATURE}, weight=KD_WEIGHT)],
        task_weight=CE_WEIGHT,
    )
    # torch.optim.SGD's weight decay is added to the gradient before momentum, like this chain.
    optimizer = optax.chain(
        optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM)
    )
    distill = engine.jit_train_step(
        engine.make_train_step(student, objective, optimizer, teacher=config)
    )
    alone = engine.jit_train_step(engine.make_train_step(student, Objective(), optimizer))
    teacher_forward = jax.jit(
        lambda t, b: engine.teacher_outputs(config, t, None, b, student.apply).logits
    )
    batch = jax.device_put(batch)
    states = {
        "distill": engine.init_train_state(student, optimizer),
        "alone": engine.init_train_state(student, optimizer),
    }
    compiled = {
        "distill": distill.lower(states["distill"], frozen, batch).compile(),
        "student_step": alone.lower(states["alone"], None, batch).compile(),
        "teacher_forward": teacher_forward.lower(frozen, batch).compile(),
    }

    def run_distill():
        states["distill"], metrics = compiled["distill"](states["distill"], frozen, batch)
        return jax.block_until_ready(metrics)

    def run_alone():
        states["alone"], metrics = compiled["student_step"](states["alone"], None, batch)
        return jax.block_until_ready(metrics)

    def run_teacher():
        return jax.block_until_ready(compiled["teacher_forward"](frozen, batch))

    return {
        "models": (teacher, student),
        "run": {"distill": run_distill, "student_step": run_alone, "teacher_forward": run_teacher},
        "memory": {name: _memory_analysis(c) for name, c in compiled.items()},
    }


def torch_side(
    args: argparse.Namespace,
    names: tuple[str, str],
    jax_models: tuple[engine.Model, engine.Model],
    batch: dict[str, np.ndarray],
) -> dict[str, Any] | None:
    """The same three functions in PyTorch, on copies of the jaxkd models' initial weights.

    Args:
      args: the parsed command line.
      names: teacher and student registry names.
      jax_models: the jaxkd teacher and student whose variables are copied.
      batch: the batch `jax_side` got; images are transposed to NCHW.

    Returns:
      `run`, `peak_allocated` (name -> profiler peak bytes), `version` and `threads`; None
      when torch is not installed.
    """
    try:
        import _torch_models
        import torch
    except ImportError:
        return None
    torch.set_num_threads(args.threads)
    models = {}
    for role, name, source in zip(("teacher", "student"), names, jax_models, strict=True):
        model = _torch_models.create_model(name, args.num_classes)
        _torch_models.load_jax_variables(model, source.params, source.state)
        models[role] = model
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    images = torch.from_numpy(np.ascontiguousarray(batch["inputs"].transpose(0, 3, 1, 2)))
    images = images.contiguous(memory_format=fmt)
    labels = torch.from_numpy(batch["label"]).long()
    teacher_dtype = torch.bfloat16 if args.teacher_dtype == "bfloat16" else None
    for model in models.values():
        model.to(memory_format=fmt)
    steps = _torch_models.make_steps(
        models["teacher"],
        models["student"],
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        temperature=TEMPERATURE,
        kd_weight=KD_WEIGHT,
        ce_weight=CE_WEIGHT,
        teacher_dtype=teacher_dtype,
    )
    run = {name: (lambda f=f: f(images, labels)) for name, f in steps.items()}
    return {
        "run": run,
        "peak_allocated": lambda name: _torch_models.peak_allocated_bytes(run[name]),
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _first_values(sides: dict) -> dict[str, float]:
    """The first step's loss and the teacher's logits on both sides, from identical weights."""
    out = {}
    for side, fns in sides.items():
        out[f"{side}_first_distill_loss"] = float(np.asarray(_loss(fns["distill"]())))
        out[f"{side}_first_student_loss"] = float(np.asarray(_loss(fns["student_step"]())))
        out[f"{side}_teacher_logits"] = _to_numpy(fns["teacher_forward"]())
    if "torch" in sides:
        ref = out["jax_teacher_logits"]
        diff = np.abs(ref - out["torch_teacher_logits"]).max() / np.abs(ref).max()
        out["teacher_logits_rel_diff"] = float(diff)
    for side in sides:
        del out[f"{side}_teacher_logits"]
    return out


def _loss(result: Any) -> Any:
    return result["loss"] if isinstance(result, dict) else result


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _untimed_result(fn: Any) -> Any:
    """`fn` as a timed case: its result (metrics, logits) is not a breakdown of its time."""

    def call() -> None:
        fn()

    return call


def _floor(run: dict) -> Any:
    """Teacher forward alone, then the student step alone; reports both parts' seconds."""

    def call() -> dict[str, float]:
        start = time.perf_counter()
        run["teacher_forward"]()
        middle = time.perf_counter()
        run["student_step"]()
        return {"teacher_forward": middle - start, "student_step": time.perf_counter() - middle}

    return call


def run_pair(args: argparse.Namespace, pair: str) -> dict[str, Any]:
    """Measures one teacher:student pair: the check, interleaved timings, then memory.

    Args:
      args: the parsed command line.
      pair: "teacher:student".

    Returns:
      The configuration, `times` (case -> median/mean/min ms and count), `ratios`,
      `memory`, `check` (first-step losses on both sides) and the load average.
    """
    teacher_name, student_name = pair.split(":")
    batch = _make_batch(args)
    jx = jax_side(args, teacher_name, student_name, batch)
    th = None
    if not args.no_torch:
        th = torch_side(args, (teacher_name, student_name), jx["models"], batch)
    sides = {"jax": jx["run"]} | ({} if th is None else {"torch": th["run"]})
    check = _first_values(sides)
    cases = {}
    for side, run in sides.items():
        cases[f"{side}/distill"] = _untimed_result(run["distill"])
        cases[f"{side}/floor"] = _floor(run)
    load_before = load_average()
    times = interleaved(cases, rounds=args.rounds, iters=args.iters, warmup=args.warmup)
    load_after = load_average()
    memory: dict[str, Any] = {
        "jax_compiled": jx["memory"],
        "faulted_bytes": {
            f"{side}/{name}": faulted_bytes(run[name])
            for side, run in sides.items()
            for name in ("distill", "student_step")
        },
    }
    if th is not None and not args.no_memory:
        memory["torch_peak_allocated"] = {
            name: th["peak_allocated"](name) for name in ("distill", "student_step")
        }
    stats = {name: summarize(t) for name, t in times.items()}
    return {
        "pair": pair,
        "batch": args.batch,
        "image_size": args.image_size,
        "num_classes": args.num_classes,
        "teacher_dtype": args.teacher_dtype,
        "channels_last": args.channels_last,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "cores": cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "torch_version": None if th is None else th["version"],
        "torch_threads": None if th is None else th["threads"],
        "load_average": {"before": load_before, "after": load_after},
        "times": stats,
        "ratios": _ratios(stats),
        "memory": memory,
        "check": check,
    }


def _ratios(stats: dict[str, dict[str, float]]) -> dict[str, float]:
    out = {}
    for side in ("jax", "torch"):
        if f"{side}/distill" in stats:
            out[f"{side}_step_over_floor"] = (
                stats[f"{side}/distill"]["median_ms"] / stats[f"{side}/floor"]["median_ms"]
            )
    if "torch/distill" in stats:
        out["jax_over_torch"] = (
            stats["jax/distill"]["median_ms"] / stats["torch/distill"]["median_ms"]
        )
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs every pair, prints its tables, optionally writes JSON, and returns the results."""
    args = parse_args(argv)
    if args.xla_defaults:
        # Before the first computation: XLA reads XLA_FLAGS when JAX creates its CPU client.
        xla_cpu.configure_cpu()
    results = []
    print(f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    for pair in args.pair:
        result = run_pair(args, pair)
        print(format_result(result), flush=True)
        print()
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

"""`jaxkd report DIR...`: compare runs in a table and plot their learning curves.

For each run directory (a `jaxkd train` workdir) the table shows the student model, its
parameter count, its FLOPs per example (XLA's count for the compiled inference forward pass,
a multiply-add counting 2), its latency per batch on this machine (median of timed calls
after warm-up), its best and final test accuracy and its teacher's accuracy, all read from
the run's `metrics.jsonl`. The PNG plots test accuracy and training loss against the epoch
for every run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxkd.cli import ArgumentParser

METRICS_FILE = "metrics.jsonl"
_SAMPLE_S = 0.01  # seconds per latency sample

_HELP = """\
Compare `jaxkd train` runs: parameters, FLOPs per example, latency per batch on this
machine, best/final test accuracy and teacher accuracy, plus a PNG of learning curves.

  jaxkd report runs/cifar100/resnet32x4 runs/cifar100/resnet32x4_resnet8x4/* --out report.png
"""


@dataclasses.dataclass(frozen=True)
class Curves:
    """A run's metrics by epoch, read from its `metrics.jsonl`.

    Attributes:
      eval_epochs, eval_accuracy: test accuracy after each evaluated epoch.
      teacher_accuracy: the teacher's test accuracy if the run logged it, else None.
      train_epochs, train_loss: mean training loss of each logged epoch (or log interval).
    """

    eval_epochs: list[float]
    eval_accuracy: list[float]
    teacher_accuracy: float | None
    train_epochs: list[float]
    train_loss: list[float]


@dataclasses.dataclass(frozen=True)
class Profile:
    """Cost of a model's inference forward pass on this machine.

    Attributes:
      params: number of trainable parameters.
      flops: FLOPs per example (XLA cost analysis of the compiled forward pass / batch).
      latency_s: median seconds per batch of `batch_size` examples, after warm-up.
      batch_size: examples per timed batch.
    """

    params: int
    flops: float
    latency_s: float
    batch_size: int


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One row of the report."""

    run: str
    model: str
    profile: Profile
    best_accuracy: float | None
    final_accuracy: float | None
    teacher_model: str | None
    teacher_accuracy: float | None
    curves: Curves


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def read_curves(workdir: str | Path) -> Curves:
    """Reads a run's `metrics.jsonl` into learning curves.

    Each line is one event `{"event": "train" | "eval" | "start", "step", "epoch", ...}`
    (`jaxkd.run`'s format): eval events carry "accuracy" (and "teacher_accuracy" with a
    teacher), train events the window's mean "loss".

    Args:
      workdir: the run directory.

    Returns:
      The `Curves`; empty lists when the run logged nothing yet.

    Raises:
      FileNotFoundError: the run has no metrics file.

    References:
      docs/training.md (the `metrics.jsonl` events).
    """
    from jaxkd.run import read_events

    path = Path(workdir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; expected the --workdir of a `jaxkd train` run"
        )
    try:
        events = read_events(workdir)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} has a line that is not JSON ({e.msg})") from None
    eval_x, eval_acc, train_x, train_loss = [], [], [], []
    teacher = None
    for event in events:
        epoch = _number(event.get("epoch"))
        if event.get("event") == "eval" and (acc := _number(event.get("accuracy"))) is not None:
            eval_x.append(epoch)
            eval_acc.append(acc)
            teacher = _number(event.get("teacher_accuracy"))
        elif event.get("event") == "train" and (loss := _number(event.get("loss"))) is not None:
            train_x.append(epoch)
            train_loss.append(loss)
    return Curves(eval_x, eval_acc, teacher, train_x, train_loss)


def _cost_flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, Sequence):  # older JAX returned one dict per device program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", math.nan))


def profile_model(
    name: str,
    kwargs: Any,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    batch_size: int,
    repeats: int = 10,
) -> Profile:
    """Parameters, FLOPs per example and latency per batch of a model's inference forward.

    The forward pass (`train=False`, logits only) is jit-compiled once; FLOPs come from
    `compiled.cost_analysis()["flops"]` (XLA counts a multiply-add as 2) divided by the
    batch size; latency is the median over `repeats` samples of the mean wall time per call
    on random inputs (each call waited on with `block_until_ready`; a sample repeats the call
    for about 10 ms, after two warm-up calls).

    Args:
      name: a model name from `jaxkd.models.list_models()`.
      kwargs: its constructor options (a config's `student.kwargs`).
      num_classes: classifier width.
      input_shape: one example's shape, e.g. (32, 32, 3).
      batch_size: examples per timed batch.
      repeats: timed calls.

    Returns:
      The model's `Profile`.

    References:
      JAX ahead-of-time compilation: `jit(f).lower(...).compile().cost_analysis()`.
    """
    import jax
    import jax.numpy as jnp

    from jaxkd.experiment.models import build_model

    model = build_model(name, kwargs, num_classes=num_classes)
    params = sum(int(x.size) for x in jax.tree.leaves(model.params))
    forward = jax.jit(lambda p, s, x: model.apply(p, s, x, train=False)[0].logits)
    x = jax.random.normal(jax.random.key(0), (batch_size, *input_shape), jnp.float32)
    compiled = forward.lower(model.params, model.state, x).compile()
    flops = _cost_flops(compiled) / batch_size
    return Profile(params, flops, _median_latency(compiled, model, x, repeats), batch_size)


def _median_latency(compiled: Any, model: Any, x: Any, repeats: int) -> float:
    def run(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            compiled(model.params, model.state, x).block_until_ready()
        return (time.perf_counter() - start) / calls

    once = max(run(1), run(1))  # the warm-up calls
    # Like timeit's autorange: a sample lasts ~10 ms, so a scheduler hiccup cannot be a sample.
    calls = max(1, math.ceil(_SAMPLE_S / max(once, 1e-9)))
    return statistics.median(run(calls) for _ in range(repeats))


def _input_shape(data_shape: Sequence[int | None], model: str) -> tuple[int, ...]:
    from jaxkd.models import get_spec

    if data_shape and all(d is not None for d in data_shape):
        return tuple(int(d) for d in data_shape)
    return tuple(get_spec(model).input_shape)  # variable-size images: the model's design size


def summarize_run(
    workdir: str,
    *,
    batch_size: int,
    repeats: int = 10,
    profiles: dict[Any, Profile] | None = None,
) -> RunRow:
    """One report row: the run's recorded config and metrics, and its model's profile.

    Args:
      workdir: a `jaxkd train` workdir.
      batch_size: examples per timed batch.
      repeats: timed calls per model.
      profiles: cache of profiles by model (runs of one model are profiled once).

    Returns:
      The run's `RunRow`.

    Raises:
      FileNotFoundError: `workdir` is not a run directory (no metrics or checkpoint).

    References:
      `jaxkd.checkpoint.restore_config` (the recorded config and model names).
    """
    from jaxkd.checkpoint import restore_config
    from jaxkd.data import dataset_spec

    if not Path(workdir).is_dir():
        raise FileNotFoundError(
            f"run directory {workdir!r} does not exist; expected the --workdir of a "
            "`jaxkd train` run"
        )
    curves = read_curves(workdir)
    recorded = restore_config(workdir)
    config, names = recorded["config"], recorded.get("models") or {}
    model = names.get("student") or config["student"]["model"]
    data = config["data"]
    spec = dataset_spec(data["name"], data_dir=data.get("data_dir"))
    kwargs = config["student"].get("kwargs") or {}
    key = (model, json.dumps(kwargs, sort_keys=True), spec.num_classes, spec.input_shape)
    profiles = {} if profiles is None else profiles
    if key not in profiles:
        profiles[key] = profile_model(
            model,
            kwargs,
            num_classes=spec.num_classes,
            input_shape=_input_shape(spec.input_shape, model),
            batch_size=batch_size,
            repeats=repeats,
        )
    accuracy = curves.eval_accuracy
    return RunRow(
        run=str(workdir).rstrip("/"),
        model=model,
        profile=profiles[key],
        best_accuracy=max(accuracy) if accuracy else None,
        final_accuracy=accuracy[-1] if accuracy else None,
        teacher_model=names.get("teacher") or config["teacher"]["model"] or None,
        teacher_accuracy=curves.teacher_accuracy,
        curves=curves,
    )


def _si(value: float, unit: str = "") -> str:
    if not math.isfinite(value):
        return "n/a"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def format_table(rows: Sequence[RunRow]) -> str:
    """The report table as aligned text: a header, a rule, one line per run.

    Args:
      rows: the runs, in the order to print.

    Returns:
      The table; accuracies in %, params and FLOPs with SI prefixes, "-" where unknown.

    References:
      The CRD and DKD papers' tables (top-1 %, params in millions).
    """
    batch = rows[0].profile.batch_size if rows else 0
    header = (
        "run",
        "model",
        "params",
        "FLOPs/example",
        f"ms/batch ({batch})",
        "best acc",
        "final acc",
        "teacher",
        "teacher acc",
    )
    body = [
        (
            row.run,
            row.model,
            _si(row.profile.params),
            _si(row.profile.flops),
            f"{1e3 * row.profile.latency_s:.2f}",
            _percent(row.best_accuracy),
            _percent(row.final_accuracy),
            row.teacher_model or "-",
            _percent(row.teacher_accuracy),
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    # Names left-aligned, numbers right-aligned.
    align = [str.ljust, str.ljust] + [str.rjust] * (len(header) - 2)
    lines = [
        "  ".join(a(c, w) for a, c, w in zip(align, r, widths, strict=True))
        for r in (header, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_curves(rows: Sequence[RunRow], out: str | Path) -> Path:
    """Writes a PNG of test accuracy and training loss against the epoch, one line per run.

    Args:
      rows: the runs.
      out: the PNG path (its directory is created).

    Returns:
      The path written.

    References:
      matplotlib's object-oriented API (`matplotlib.figure.Figure`, Agg canvas).
    """
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend

    figure = Figure(figsize=(12, 4.5), layout="constrained")
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    for row in rows:
        curves = row.curves
        percent = [100 * a for a in curves.eval_accuracy]
        label = f"{row.run} ({row.model})"
        (line,) = accuracy_axes.plot(curves.eval_epochs, percent, marker=".", label=label)
        loss_axes.plot(curves.train_epochs, curves.train_loss, color=line.get_color())
    accuracy_axes.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    loss_axes.set(xlabel="epoch", ylabel="training loss (objective)", title="Training loss")
    for axes in (accuracy_axes, loss_axes):
        axes.grid(alpha=0.3)
    accuracy_axes.legend(fontsize="small")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def main(argv: Sequence[str]) -> int:
    """`jaxkd report DIR... [--out report.png] [--batch-size 64]`.

    Args:
      argv: the arguments after `jaxkd report`.

    Returns:
      0 once the table is printed and the PNG written.

    References:
      `summarize_run`, `format_table`, `plot_curves`.
    """
    parser = ArgumentParser("report", _HELP)
    parser.add_argument("runs", nargs="+", metavar="DIR", help="`jaxkd train` workdirs")
    parser.add_argument("--out", default="report.png", help="learning-curve PNG (report.png)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="examples per timed batch (default 64)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per model (10)")
    args = parser.parse_args(list(argv))
    if args.batch_size < 1 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be positive")
    profiles: dict[Any, Profile] = {}
    rows = [
        summarize_run(run, batch_size=args.batch_size, repeats=args.repeats, profiles=profiles)
        for run in args.runs
    ]
    print(format_table(rows))
    print(f"learning curves: {plot_curves(rows, args.out)}")
    return 0

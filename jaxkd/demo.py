"""`jaxkd demo`: knowledge distillation on MNIST-1D, on a laptop CPU, in minutes.

The demo trains the MNIST-1D paper's CNN teacher on the 4,000 labelled training signals,
then one student (the paper's MLP) four ways:

  (a) from the labels alone;
  (b) KD: the teacher's soft targets on the same 4,000 signals;
  (c) pseudo-labels: the teacher's top class on the transfer set, the 4,000 signals plus
      50,000 unlabelled ones drawn from the MNIST-1D generator with another seed;
  (d) KD: the teacher's soft targets on that transfer set.

Plain KD on the few labelled signals gains little; the teacher pays off when it labels
inputs the labels never covered, as DeepSeek-R1's 800k written samples did for its
students. Every run is an ordinary `jaxkd train` run directory (Orbax checkpoints, the
teacher stored apart, `metrics.jsonl`), so `jaxkd eval --checkpoint DIR` restores any
student alone and `jaxkd report` compares them. Running the demo again resumes (finished
runs are only re-evaluated); delete the directory to start over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from jaxkd.cli import ArgumentParser
from jaxkd.experiment import mnist1d

_HELP = """\
Train MNIST-1D's CNN teacher on its 4,000 labelled signals, then a student (the paper's MLP)
four ways: from the labels, KD on the labels, the teacher's pseudo-labels and KD on a
transfer set of 54,000 signals. Prints the table, writes the learning curves (PNG) and the
runs' Orbax checkpoints, and shows the `jaxkd eval` command that restores a student.

  jaxkd demo                       # into runs/demo; minutes on a 2-core CPU
  jaxkd demo --workdir /tmp/demo --student mnist1d_cnn_small
"""

PLOT_FILE = "learning_curves.png"
TABLE_FILE = "results.md"


@dataclasses.dataclass(frozen=True)
class DemoRun:
    """One run of the demo.

    Attributes:
      name: its directory under the demo's workdir.
      label: its name in the table and the plot, e.g. "(d) KD".
      data: what it trains on, in words.
      config: the experiment config.
    """

    name: str
    label: str
    data: str
    config: ml_collections.ConfigDict


def _scaled(epochs: int, scale: float) -> int:
    return max(1, round(epochs * scale))


def demo_runs(
    workdir: str, *, student: str = "mnist1d_mlp", seed: int = 0, epochs_scale: float = 1.0
) -> list[DemoRun]:
    """The teacher run and the four student runs, in training order.

    Args:
      workdir: the demo's directory; run `name` trains in `workdir/name`.
      student: the student model (a name of `jaxkd.experiment.mnist1d.STUDENTS`).
      seed: seed of every run.
      epochs_scale: multiplies every run's epochs (at least 1), for a quicker look.

    Returns:
      The `DemoRun`s.

    References:
      Hinton et al., "Distilling the Knowledge in a Neural Network", 2015 (transfer set).
    """
    if not epochs_scale > 0:
        raise ValueError(f"`epochs_scale` must be > 0, got {epochs_scale}.")
    teacher_dir = str(Path(workdir) / "teacher")
    labelled = f"{mnist1d.NUM_LABELLED:,} labelled"
    transfer = f"{labelled} + {mnist1d.NUM_UNLABELLED:,} unlabelled"

    def student_run(name, label, method, data, words):
        config = mnist1d.student_config(
            method,
            data=data,
            student=student,
            teacher_checkpoint=teacher_dir,
            seed=seed,
            epochs=_scaled(100 if data == "labels" else 20, epochs_scale),
        )
        return DemoRun(name, label, words, config)

    teacher = mnist1d.teacher_config(seed=seed, epochs=_scaled(80, epochs_scale))
    return [
        DemoRun("teacher", "teacher", labelled, teacher),
        student_run("student_scratch", "(a) from labels", "scratch", "labels", labelled),
        student_run("student_kd_labels", "(b) KD", "kd", "labels", labelled),
        student_run(
            "student_pseudo_labels", "(c) pseudo-labels", "pseudo_label", "transfer", transfer
        ),
        student_run("student_kd_transfer", "(d) KD", "kd", "transfer", transfer),
    ]


def prepare_data(data_dir: str | None = None, *, echo: Callable[[str], Any] = print) -> None:
    """Generates the MNIST-1D TFDS datasets the demo reads, if they are not there yet.

    Args:
      data_dir: TFDS data dir (None: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      echo: where the one-line report goes.

    References:
      `jaxkd.data.Mnist1d` (the locally generated TFDS builder).
    """
    from jaxkd.data import open_source

    for name in (mnist1d.LABELS_DATASET, mnist1d.TRANSFER_DATASET):
        if tfds.builder(name, data_dir=data_dir).is_prepared():
            continue
        echo(f"generating the {name} TFDS dataset (first run only; nothing is downloaded) ...")
        # TFDS prints "Downloading and preparing ..." to stdout, which would mislead here.
        with contextlib.redirect_stdout(io.StringIO()):
            open_source(name, "train", data_dir=data_dir)


def run_demo(
    workdir: str,
    *,
    student: str = "mnist1d_mlp",
    seed: int = 0,
    epochs_scale: float = 1.0,
    data_dir: str | None = None,
    progress: bool | None = None,
    echo: Callable[[str], Any] = print,
) -> list[dict[str, Any]]:
    """Trains the demo's runs one after the other and returns one result row per run.

    Args:
      workdir: the demo's directory.
      student: the student model.
      seed: seed of every run.
      epochs_scale: multiplies every run's epochs.
      data_dir: TFDS data dir (None: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      progress: progress bars; None shows them on a terminal.
      echo: where the one-line progress reports go.

    Returns:
      Rows `{"name", "label", "model", "data", "accuracy", "agreement", "params",
      "seconds", "workdir"}`.

    References:
      `jaxkd.run.train_and_evaluate`.
    """
    from jaxkd.run import train_and_evaluate

    runs = demo_runs(workdir, student=student, seed=seed, epochs_scale=epochs_scale)
    prepare_data(data_dir, echo=echo)
    rows = []
    for index, run in enumerate(runs, 1):
        path = str(Path(workdir) / run.name)
        model = run.config.student.model
        echo(f"[{index}/{len(runs)}] {run.label}: {model} on {run.data} signals ...")
        started = time.perf_counter()
        summary = train_and_evaluate(run.config, path, data_dir=data_dir, progress=progress)
        final = summary["final"] or {}
        row = {
            "name": run.name,
            "label": run.label,
            "model": model,
            "data": run.data,
            "accuracy": final.get("accuracy", math.nan),
            "agreement": final.get("agreement"),
            "params": summary["params"],
            "seconds": time.perf_counter() - started,
            "workdir": path,
        }
        rows.append(row)
        echo(f"      test accuracy {100 * row['accuracy']:.1f} %  ({row['seconds']:.0f} s)")
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The demo's results as a markdown table (run, model, data, accuracy, params).

    Args:
      rows: from `run_demo`.

    Returns:
      The table.

    References:
      None (formatting).
    """
    lines = [
        "| run | model | trained on (MNIST-1D signals) | test accuracy | agreement with teacher "
        "| params |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        agreement = row["agreement"]
        agreement = "-" if agreement is None else f"{100 * agreement:.1f} %"
        lines.append(
            f"| {row['label']} | {row['model']} | {row['data']} | {100 * row['accuracy']:.1f} % "
            f"| {agreement} | {row['params']:,} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], out: str) -> Path:
    """Writes the learning curves of the runs (test accuracy and training loss by epoch).

    Args:
      rows: from `run_demo`.
      out: the PNG path.

    Returns:
      The path written.

    References:
      `jaxkd.report.plot_curves`.
    """
    from jaxkd import report

    report_rows = [
        report.RunRow(
            run=row["label"],
            model=row["model"],
            # The plot reads names and curves only; FLOPs and latency are `jaxkd report`'s job.
            profile=report.Profile(row["params"], math.nan, math.nan, 0),
            best_accuracy=None,
            final_accuracy=row["accuracy"],
            teacher_model=None,
            teacher_accuracy=None,
            curves=report.read_curves(row["workdir"]),
        )
        for row in rows
    ]
    return report.plot_curves(report_rows, out)


def main(argv: Sequence[str] | None = None) -> int:
    """`jaxkd demo [--workdir runs/demo] [--student mnist1d_mlp] [--seed 0] [--data-dir DIR]`.

    Args:
      argv: the arguments after `jaxkd demo`; None for none.

    Returns:
      0 once the table is printed and the files written.

    References:
      Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024; Hinton et
      al., 2015; Beyer et al., "Knowledge distillation: A good teacher is patient and
      consistent", CVPR 2022.
    """
    parser = ArgumentParser("demo", _HELP)
    parser.add_argument("--workdir", default="runs/demo", help="where the runs go (runs/demo)")
    parser.add_argument(
        "--student",
        default="mnist1d_mlp",
        choices=mnist1d.STUDENTS,
        help="the student model (mnist1d_mlp, the paper's MLP)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (0)")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
    parser.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        help="multiply every run's epochs, e.g. 0.1 for a quick look (1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args([] if argv is None else list(argv))
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if not args.epochs_scale > 0:
        parser.error(f"--epochs-scale must be > 0, got {args.epochs_scale}")
    # One line per run here; the runs' own per-evaluation log lines and TFDS's progress
    # bars (MNIST-1D is generated on the first run) would drown the table.
    logging.getLogger("jaxkd.run").setLevel(logging.WARNING)
    tfds.disable_progress_bar()

    started = time.perf_counter()
    rows = run_demo(
        args.workdir,
        student=args.student,
        seed=args.seed,
        epochs_scale=args.epochs_scale,
        data_dir=args.data_dir,
        progress=False if args.no_progress else None,
    )
    table = format_table(rows)
    workdir = Path(args.workdir)
    (workdir / TABLE_FILE).write_text(table + "\n")
    curves = plot(rows, str(workdir / PLOT_FILE))
    data_dir = f" --data-dir {args.data_dir}" if args.data_dir else ""
    print()
    print(table)
    print()
    print(f"learning curves: {curves}")
    print(f"checkpoints:     {', '.join(row['workdir'] for row in rows)}")
    print("restore a student alone and evaluate it:")
    print(f"  jaxkd eval --checkpoint {rows[-1]['workdir']}{data_dir}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0

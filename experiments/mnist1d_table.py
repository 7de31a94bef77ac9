r"""MNIST-1D distillation table: test accuracy, mean ± std over seeds, as in the README.

For every seed it trains the CNN teacher on the 4,000 labelled signals, then each student
(the paper's MLP and a small CNN by default) with each method: from the labels, KD on the
labels, the teacher's pseudo-labels and KD on the transfer set (4,000 + 50,000 unlabelled
signals), and feature/relation methods. Every run is a normal `jaxkd train` run directory
under `--out`; runs already finished there are only re-evaluated, so an interrupted table
resumes. Prints a markdown table and writes it to `<out>/table.md` (and the rows as JSON).

  python experiments/mnist1d_table.py --seeds 0,1,2 --out runs/mnist1d_table
  python experiments/mnist1d_table.py --students mnist1d_mlp \
      --methods scratch:labels,kd:transfer,sp+kd:transfer
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from jaxkd import xla_cpu
from jaxkd.experiment import mnist1d

DEFAULT_STUDENTS = ("mnist1d_mlp", "mnist1d_cnn_small")
DEFAULT_METHODS = (
    "scratch:labels",
    "kd:labels",
    "pseudo_label:transfer",
    "kd:transfer",
    "hint:transfer",
    "pkt+kd:transfer",
)
DATA_WORDS = {"labels": "4k labelled", "transfer": "4k labelled + 50k unlabelled"}


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _method(spec: str) -> tuple[str, bool, str]:
    name, _, data = spec.partition(":")
    method, plus, extra = name.partition("+")
    if (plus and extra != "kd") or data not in mnist1d.DATA:
        raise ValueError(
            f"--methods entry {spec!r}: expected '<method>[+kd]:<data>' with data in "
            f"{', '.join(mnist1d.DATA)}, e.g. 'rkd+kd:transfer'."
        )
    return method, bool(plus), data


def _mean_std(values: Sequence[float]) -> str:
    percent = [100 * v for v in values]
    std = statistics.stdev(percent) if len(percent) > 1 else 0.0
    return f"{statistics.fmean(percent):.1f} ± {std:.1f}"


def _train(config, workdir: Path, data_dir: str | None) -> dict:
    from jaxkd.run import train_and_evaluate

    summary = train_and_evaluate(config, str(workdir), data_dir=data_dir, progress=False)
    final = summary["final"] or {}
    return {
        "accuracy": final.get("accuracy"),
        "agreement": final.get("agreement"),
        "params": summary["params"],
        "seconds": summary["wall_time_s"],
    }


def run_table(
    out: Path,
    *,
    seeds: Sequence[int],
    students: Sequence[str],
    methods: Sequence[str],
    data_dir: str | None,
    epochs_scale: float = 1.0,
) -> list[dict]:
    """Trains every (seed, student, method) run under `out` and returns one row per run."""
    scale = lambda epochs: max(1, round(epochs * epochs_scale))
    parsed = [_method(m) for m in methods]
    rows = []
    for seed in seeds:
        teacher_dir = out / f"seed{seed}" / "teacher"
        config = mnist1d.teacher_config(seed=seed, epochs=scale(80))
        rows.append(
            {"seed": seed, "student": mnist1d.TEACHER, "method": "teacher", "data": "labels"}
            | _train(config, teacher_dir, data_dir)
        )
        print(f"seed {seed}: teacher {100 * rows[-1]['accuracy']:.1f} %", flush=True)
        for student in students:
            for method, plus_kd, data in parsed:
                name = method + ("+kd" if plus_kd else "")
                config = mnist1d.student_config(
                    method,
                    data=data,
                    student=student,
                    teacher_checkpoint=str(teacher_dir),
                    plus_kd=plus_kd,
                    seed=seed,
                    epochs=scale(100 if data == "labels" else 20),
                )
                workdir = out / f"seed{seed}" / student / f"{name}_{data}"
                row = {"seed": seed, "student": student, "method": name, "data": data}
                rows.append(row | _train(config, workdir, data_dir))
                print(
                    f"seed {seed}: {student} {name} on {data}: "
                    f"{100 * rows[-1]['accuracy']:.1f} % ({rows[-1]['seconds']:.0f} s)",
                    flush=True,
                )
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Markdown: one line per (student, method, data), accuracy and agreement mean ± std."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["student"], row["method"], row["data"]), []).append(row)
    lines = [
        "| model | method | trained on | test accuracy (%) | agreement with teacher (%) "
        "| params | seeds |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for (student, method, data), group in groups.items():
        accuracy = _mean_std([r["accuracy"] for r in group])
        agreements = [r["agreement"] for r in group if r["agreement"] is not None]
        agreement = _mean_std(agreements) if agreements else "-"
        lines.append(
            f"| {student} | {method} | {DATA_WORDS[data]} | {accuracy} | {agreement} "
            f"| {group[0]['params']:,} | {len(group)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (0,1,2)")
    parser.add_argument("--out", default="runs/mnist1d_table", help="output directory")
    parser.add_argument(
        "--students", default=",".join(DEFAULT_STUDENTS), help="comma-separated student models"
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated '<method>[+kd]:<data>' (methods: {', '.join(mnist1d.METHODS)})",
    )
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
    parser.add_argument(
        "--epochs-scale", type=float, default=1.0, help="multiply every run's epochs (1)"
    )
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds or min(seeds) < 0:
        parser.error(f"--seeds must name non-negative seeds, got {args.seeds!r}")
    students = _split(args.students)
    for student in students:
        if student not in mnist1d.STUDENTS:
            parser.error(f"unknown student {student!r}; choose from {', '.join(mnist1d.STUDENTS)}")
    methods = _split(args.methods)
    try:
        for spec in methods:
            _method(spec)
    except ValueError as e:
        parser.error(str(e))
    logging.getLogger("jaxkd.run").setLevel(logging.WARNING)
    xla_cpu.configure_cpu()  # before the first computation

    out = Path(args.out)
    started = time.perf_counter()
    rows = run_table(
        out,
        seeds=seeds,
        students=students,
        methods=methods,
        data_dir=args.data_dir,
        epochs_scale=args.epochs_scale,
    )
    table = format_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    print()
    print(table)
    print(f"\n{len(rows)} runs in {time.perf_counter() - started:.0f} s; table in {out}/table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

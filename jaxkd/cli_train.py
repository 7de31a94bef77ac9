"""`jaxkd train` and `jaxkd eval`: run an experiment config, evaluate a run's checkpoint."""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxkd.cli import ArgumentParser, UsageError
from jaxkd.cli_config import apply_overrides, load_config

_TRAIN_HELP = """\
Train a teacher, a student from labels, or a distilled student: whatever the config says.
The config is the whole experiment; any field can be overridden on the command line, typed
like the field it replaces (an unknown key is an error):

  jaxkd train --config experiments/configs/cifar100.py:resnet32x4 --workdir runs/cifar100/resnet32x4
  jaxkd train --config experiments/configs/cifar100.py:resnet32x4_resnet8x4,dkd \\
      --workdir runs/cifar100/resnet32x4_resnet8x4/dkd --config.optimizer.lr=0.1

Running again with the same --workdir resumes from its latest checkpoint; --config may then be
left out to reuse the config recorded there.
"""

_EVAL_HELP = """\
Restore the student of a `jaxkd train` run (alone: the teacher is not read unless --teacher)
and print its metrics on a split:

  jaxkd eval --checkpoint runs/cifar100/resnet32x4_resnet8x4/kd --split test --teacher
"""


def _format(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral) or float(value).is_integer():
        return str(int(value))
    return f"{float(value):.4g}"


def _metrics_line(metrics: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    return "  ".join(f"{k}={_format(v)}" for k, v in metrics.items() if k not in skip)


def _print_train(summary: Mapping[str, Any]) -> None:
    print(
        f"{summary['workdir']}: {summary['step']}/{summary['num_steps']} steps"
        f"{' (preempted: run again to resume)' if summary.get('preempted') else ''}, "
        f"{summary['params']:,} student params, {_format(summary['steps_per_sec'])} steps/s, "
        f"{_format(summary['wall_time_s'])} s"
    )
    for which in ("final", "best"):
        metrics = summary.get(which)
        if metrics:
            print(f"  {which:<5} step {metrics.get('step')}: {_metrics_line(metrics, ('step',))}")


def _print_eval(metrics: Mapping[str, Any]) -> None:
    print(
        f"{metrics['workdir']}: {metrics['model']} ({metrics['params']:,} params), step "
        f"{metrics['step']} ({metrics['step_kind']}), split {metrics['split']!r}"
    )
    header = ("workdir", "model", "params", "step", "step_kind", "split")
    print(f"  {_metrics_line(metrics, header)}")


def _json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, str | bool | None):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


def _recorded_config(workdir: str) -> ml_collections.ConfigDict:
    from jaxkd.checkpoint import restore_config  # Orbax is slow to import; only when needed.

    if not Path(workdir).is_dir():
        raise UsageError(f"--config is required: --workdir {workdir!r} holds no run to resume")
    try:
        recorded = restore_config(workdir)
    except FileNotFoundError:
        raise UsageError(
            f"--config is required: --workdir {workdir!r} holds no checkpoint to resume"
        ) from None
    config = ml_collections.ConfigDict(recorded["config"])
    config.lock()
    return config


def train(argv: Sequence[str]) -> int:
    """`jaxkd train --config FILE[:ARG] [--config.a.b=v ...] --workdir DIR`.

    Args:
      argv: the arguments after `jaxkd train`.

    Returns:
      0 once training and the final evaluation are done (their metrics are printed).

    References:
      flax `examples/imagenet/main.py` (`--config` file, `--workdir`).
    """
    parser = ArgumentParser("train", _TRAIN_HELP)
    parser.add_argument(
        "--config",
        metavar="FILE[:ARG]",
        help="experiment config file (get_config(ARG)); then --config.KEY=VALUE overrides",
    )
    parser.add_argument(
        "--workdir", required=True, help="run directory: checkpoints, metrics, resumption"
    )
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    args, overrides = parser.parse_known_args(list(argv))
    if args.config is None:
        config = apply_overrides(_recorded_config(args.workdir), overrides)
    else:
        config = load_config(args.config, overrides)

    from jaxkd import run  # JAX and the data stack load only once the command line is valid.

    summary = run.train_and_evaluate(config, args.workdir)
    if args.json:
        print(json.dumps(_json(summary)))
    else:
        _print_train(summary)
    return 0


def evaluate(argv: Sequence[str]) -> int:
    """`jaxkd eval --checkpoint DIR [--split test] [--teacher] [--step best] [--model NAME]`.

    Args:
      argv: the arguments after `jaxkd eval`.

    Returns:
      0 once the metrics are printed.

    References:
      `jaxkd.run.evaluate_checkpoint`.
    """
    parser = ArgumentParser("eval", _EVAL_HELP)
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="a run's --workdir")
    parser.add_argument("--split", default="test", help="TFDS split (default: test)")
    parser.add_argument(
        "--teacher", action="store_true", help="also evaluate the run's teacher on the split"
    )
    parser.add_argument(
        "--step", default="best", help="'best' (default, by the run's metric), 'latest' or a step"
    )
    parser.add_argument(
        "--model", default=None, help="fail unless the run trained this model (e.g. resnet8x4)"
    )
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: the config's)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = parser.parse_args(list(argv))
    step: int | str = args.step
    if step not in ("best", "latest"):
        try:
            step = int(step)
        except ValueError:
            raise UsageError(f"--step must be 'best', 'latest' or an int, got {step!r}") from None
    if not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(
            f"--checkpoint {args.checkpoint!r} is not a directory; expected the --workdir of a "
            "`jaxkd train` run"
        )

    from jaxkd import run

    metrics = run.evaluate_checkpoint(
        args.checkpoint,
        split=args.split,
        with_teacher=args.teacher,
        data_dir=args.data_dir,
        step=step,
        model=args.model,
    )
    if args.json:
        print(json.dumps(_json(metrics)))
    else:
        _print_eval(metrics)
    return 0

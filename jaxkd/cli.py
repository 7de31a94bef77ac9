"""The `jaxkd` command: `jaxkd <verb> [args]`, one verb per job.

A verb is a function `main(argv: list[str]) -> int` (an exit status) registered in `VERBS`
by its import path, so `jaxkd --help` starts without importing JAX, and adding a verb is one
entry in that table. This module is also the error boundary: bad input (a `ValueError`,
`TypeError` or `OSError` such as `FileNotFoundError` from the library) is reported as one
line on stderr with exit status 2; `--debug` anywhere on the line shows the traceback too.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from jaxkd import xla_cpu

USAGE_STATUS = 2  # bad input, as argparse and POSIX tools use


class UsageError(ValueError):
    """A command line that cannot be run as given (reported in one line, exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Verb:
    """A registered verb.

    Attributes:
      target: "module:function" of `function(argv: list[str]) -> int`, imported on use.
      help: one line for `jaxkd --help`.
    """

    target: str
    help: str

    def load(self) -> Callable[[list[str]], int]:
        """Imports and returns the verb's function."""
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


# The verbs, in the order `jaxkd --help` lists them. Add one here to add a verb.
VERBS: dict[str, Verb] = {
    "demo": Verb("jaxkd.demo:main", "the MNIST-1D distillation demo on this CPU (a few minutes)"),
    "train": Verb(
        "jaxkd.cli_train:train",
        "train a teacher, a student from labels, or a distilled student from a config file",
    ),
    "eval": Verb("jaxkd.cli_train:evaluate", "restore a run's student and print its metrics"),
    "cache-teacher": Verb(
        "jaxkd.lm.cli:cache_teacher",
        "run a saved teacher LM over a text dataset and store its top-k per token",
    ),
    "generate": Verb(
        "jaxkd.lm.cli:generate",
        "sample teacher completions as a dataset for sequence-level distillation",
    ),
    "report": Verb(
        "jaxkd.report:main",
        "table of params, FLOPs, latency and accuracy of runs, and a PNG of learning curves",
    ),
}


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` that raises `UsageError` instead of printing usage and exiting.

    `main` then reports the problem in one line like every other bad input.
    """

    def __init__(self, verb: str, description: str, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(
            prog=f"jaxkd {verb}", description=description, allow_abbrev=False, **kwargs
        )

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    return text


def _usage() -> str:
    width = max(len(name) for name in VERBS)
    verbs = "\n".join(f"  {name:<{width}}  {verb.help}" for name, verb in VERBS.items())
    return (
        "usage: jaxkd [--debug] <verb> [args]\n\n"
        "Knowledge distillation for JAX and Flax.\n\n"
        f"verbs:\n{verbs}\n\n"
        "`jaxkd <verb> --help` describes a verb; --debug shows tracebacks of errors."
    )


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # no-op if configured
    logging.getLogger("jaxkd").setLevel(logging.INFO)  # a run's evaluations, as they happen
    if not debug:  # Orbax's and TFDS's absl warnings are implementation detail to a CLI user.
        logging.getLogger("absl").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `jaxkd <verb> [args]` and returns the exit status (0 ok, 2 bad input).

    Args:
      argv: the arguments after the program name; None reads `sys.argv[1:]`.

    Returns:
      The verb's exit status, or 2 for bad input (reported in one line on stderr).

    References:
      Python `argparse` sub-commands; POSIX exit status 2 for usage errors.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else USAGE_STATUS
    name, rest = args[0], args[1:]
    if name not in VERBS:
        print(
            f"jaxkd: error: unknown verb {name!r}; expected one of {', '.join(VERBS)} "
            "(see `jaxkd --help`)",
            file=sys.stderr,
        )
        return USAGE_STATUS
    _configure_logging(debug)
    # Before any verb runs a computation (XLA reads its flags once, at start-up).
    xla_cpu.configure_cpu()
    try:
        return int(VERBS[name].load()(rest) or 0)
    except (ValueError, TypeError, OSError) as e:
        if debug:
            traceback.print_exc()
        hint = "" if debug or isinstance(e, UsageError) else " (--debug shows the traceback)"
        print(f"jaxkd {name}: error: {_one_line(e)}{hint}", file=sys.stderr)
        return USAGE_STATUS
    except SystemExit as e:  # argparse's --help
        return e.code if isinstance(e.code, int) else 0 if e.code is None else USAGE_STATUS
    except KeyboardInterrupt:
        print(f"jaxkd {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

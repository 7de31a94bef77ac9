"""Experiment configs from the command line: a config file plus `--config.a.b=value` overrides.

A config file is a Python module whose `get_config()` returns the experiment as a locked
`ml_collections.ConfigDict` (`path.py:arg` calls `get_config("arg")`). Overrides are parsed
by ml_collections' own absl flag (`config_flags.DEFINE_config_dict`), which converts each
value to the type of the field it replaces: `--config.optimizer.lr=abc` and
`--config.num_epochs=1.5` are errors, and so is a key the config does not define.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxkd.cli import UsageError

_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=\s]+)")


class _LiteralListParser(flags.ArgumentParser):
    """Parses list fields (`--config.optimizer.decay_epochs='[30, 60]'`) as Python literals."""

    def parse(self, argument: Any) -> list:
        if isinstance(argument, list):
            return argument
        try:
            value = ast.literal_eval(argument)
        except (ValueError, SyntaxError):
            raise ValueError(
                f"expected a list literal such as [30, 60], got {argument!r}"
            ) from None
        if isinstance(value, tuple):
            value = list(value)
        return value if isinstance(value, list) else [value]

    def flag_type(self) -> str:
        return "list"


class _NoneFieldParser(flags.ArgumentParser):
    """Parses fields whose default is None (e.g. a term's `adapter`): a literal, else a string."""

    def parse(self, argument: Any) -> Any:
        if not isinstance(argument, str):
            return argument
        try:
            return ast.literal_eval(argument)
        except (ValueError, SyntaxError):
            return argument

    def flag_type(self) -> str:
        return "literal or string"


# ml_collections parses scalars, tuples and ConfigDicts; the schema also has lists and Nones.
config_flags.register_flag_parser_for_type(list, _LiteralListParser())
config_flags.register_flag_parser_for_type(type(None), _NoneFieldParser())


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py` or `path.py:arg` and returns its locked `get_config([arg])`.

    Args:
      spec: the config file path, optionally followed by ":" and the argument of
        `get_config`, e.g. "experiments/configs/cifar100.py:resnet32x4_resnet8x4,kd".

    Returns:
      The config, locked so that unknown keys raise.

    Raises:
      FileNotFoundError: the file does not exist.
      UsageError: the file has no `get_config`, it takes no argument but one was given, or
        it does not return a `ConfigDict`.

    References:
      ml_collections `config_flags.DEFINE_config_file` (the `path.py:arg` convention).
    """
    path_text, colon, arg = spec.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path_text!r} does not exist; expected a Python file defining "
            "get_config(), e.g. experiments/configs/cifar100.py"
        )
    module_spec = importlib.util.spec_from_file_location(f"jaxkd_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise UsageError(f"config file {path_text!r} defines no get_config() function")
    if colon and not inspect.signature(get_config).parameters:
        raise UsageError(f"{path_text}: get_config() takes no argument, but {spec!r} passes one")
    config = get_config(arg) if colon else get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(
            f"{path_text}: get_config() must return an ml_collections.ConfigDict, got "
            f"{type(config).__name__}"
        )
    config.lock()
    return config


def _check_key(config: ml_collections.ConfigDict, path: str) -> None:
    node, walked = config, "config"
    for key in path.split("."):
        name = key.split("[", 1)[0]
        if not isinstance(node, ml_collections.ConfigDict):
            raise UsageError(
                f"cannot set config.{path}: {walked} is a {type(node).__name__}, not a section"
            )
        if name not in node:
            raise UsageError(
                f"unknown config key {walked}.{name} (in --config.{path}); {walked} has: "
                f"{', '.join(sorted(node.keys())) or 'no keys'}"
            )
        node, walked = node[name], f"{walked}.{name}"


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
    node = config
    for key in path.split("."):
        node = node[key]
    return node


def _check_list_items(path: str, before: list, after: Any) -> None:
    kinds = {type(x) for x in before}
    if len(kinds) != 1 or not isinstance(after, list):
        return
    (kind,) = kinds
    allowed = (int, float) if kind is float else (kind,)
    for item in after:
        if (isinstance(item, bool) and kind is not bool) or not isinstance(item, allowed):
            raise UsageError(f"--config.{path}: expected a list of {kind.__name__}, got {after!r}")


def _explain(config: ml_collections.ConfigDict, error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = lines[0] if lines else repr(error)
    if len(detail) > 1 and detail[0] == detail[-1] and detail[0] in "'\"":  # str(KeyError)
        detail = detail[1:-1]
    detail = detail.removeprefix("flag ")
    match = re.search(r"--config\.([\w.]+)", detail)
    if match:
        try:
            kind = type(_get(config, match.group(1))).__name__
        except (KeyError, AttributeError):
            pass
        else:
            detail += f" (config.{match.group(1)} is of type {kind})"
    return f"bad config override {detail}"


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
    """Applies `--config.a.b=value` arguments to `config`, each value typed like its field.

    Args:
      config: a (locked) config.
      overrides: command-line arguments: `--config.key=value`, `--config.key value`,
        `--config.flag` / `--noconfig.flag` for booleans; lists as literals
        (`--config.optimizer.decay_epochs=[30,60]`).

    Returns:
      The same config, updated in place.

    Raises:
      UsageError: an unknown key, a value of the wrong type, or an argument that is not an
        override; the message names the key and what was expected.

    References:
      ml_collections `config_flags.DEFINE_config_dict` (typed field overrides).
    """
    paths = [m.group(1) for m in map(_OVERRIDE.match, overrides) if m]
    for path in paths:
        _check_key(config, path)
    # ml_collections checks a list's type, not its items': remember them to check after.
    lists = {p: list(v) for p in paths if "[" not in p and isinstance(v := _get(config, p), list)}
    argv = ["jaxkd", *overrides]
    values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict(
            "config", config, flag_values=values, lock_config=True, sys_argv=argv
        )
        leftover = values(argv)[1:]
    except flags.UnrecognizedFlagError as e:
        raise UsageError(
            f"unknown argument --{e.flagname}; config overrides look like --config.optimizer.lr=0.1"
        ) from None
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        raise UsageError(_explain(config, e)) from None
    if leftover:
        raise UsageError(
            f"unexpected argument {leftover[0]!r}; config overrides look like "
            "--config.optimizer.lr=0.1"
        )
    for path, before in lists.items():
        _check_list_items(path, before, _get(config, path))
    return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`load_config_file(spec)` with `apply_overrides(..., overrides)`.

    Args:
      spec: "path.py" or "path.py:arg".
      overrides: `--config.a.b=value` arguments.

    Returns:
      The locked, overridden config.

    Raises:
      FileNotFoundError, UsageError: see `load_config_file` and `apply_overrides`.

    References:
      big_vision and flax examples: one `get_config()` file per experiment.
    """
    return apply_overrides(load_config_file(spec), overrides)

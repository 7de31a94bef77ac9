"""The `jaxkd` dispatcher: verbs, help, and bad input as one line with exit status 2."""

import importlib.metadata
import pathlib
import subprocess
import sys

import pytest

from jaxkd import cli

CIFAR100 = pathlib.Path(__file__).parents[2] / "experiments" / "configs" / "cifar100.py"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_console_script_points_at_main():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [s.value for s in scripts if s.name == "jaxkd"] == ["jaxkd.cli:main"]


def test_every_verb_resolves_to_a_function():
    for name, verb in cli.VERBS.items():
        assert callable(verb.load()), name


def test_help_lists_every_verb(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, verb in cli.VERBS.items():
        assert name in out and verb.help in out


def test_no_verb_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    assert "usage: jaxkd" in capsys.readouterr().err


def test_unknown_verb(capsys):
    assert cli.main(["trian"]) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert "unknown verb 'trian'" in line and "train" in line


@pytest.fixture
def failing_verb(monkeypatch):
    def fail(argv):
        if argv == ["usage"]:
            cli.ArgumentParser("boom", "a verb").parse_args(["--nope"])
        if argv == ["other"]:
            raise RuntimeError("a bug, not bad input")
        raise FileNotFoundError("no run at /x;\nexpected a workdir\nmore detail")

    module = type(sys)("jaxkd_test_verbs")
    module.fail = fail
    monkeypatch.setitem(sys.modules, "jaxkd_test_verbs", module)
    monkeypatch.setitem(cli.VERBS, "boom", cli.Verb("jaxkd_test_verbs:fail", "fails"))


def test_library_errors_are_one_line(failing_verb, capsys):
    assert cli.main(["boom"]) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert line.startswith("jaxkd boom: error: no run at /x;") and "--debug" in line


def test_debug_shows_the_traceback(failing_verb, capsys):
    assert cli.main(["boom", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and _lines(err)[-1].startswith("jaxkd boom: error: no run at /x")


def test_argparse_errors_are_one_line(failing_verb, capsys):
    assert cli.main(["boom", "usage"]) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert "unrecognized arguments: --nope" in line and "jaxkd boom --help" in line


def test_other_exceptions_are_not_hidden(failing_verb):
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["boom", "other"])


def test_console_script_exit_status_and_one_line(tmp_path):
    command = [
        sys.executable, "-m", "jaxkd.cli", "train",
        "--config", f"{CIFAR100}:resnet32x4_resnet8x4,kd",
        "--workdir", str(tmp_path / "run"), "--config.optimizer.lrr=0.1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = _lines(done.stderr)
    assert "unknown config key config.optimizer.lrr" in line and "lr," in line
    assert not (tmp_path / "run").exists()


def test_verb_help_returns_zero(capsys):
    assert cli.main(["train", "--help"]) == 0
    assert "--config.KEY=VALUE" in capsys.readouterr().out


def test_demo_verb_is_wired(capsys):
    assert cli.main(["demo", "--help"]) == 0
    assert "usage: jaxkd demo" in capsys.readouterr().out
    assert cli.main(["demo", "--seed", "-1"]) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert line.startswith("jaxkd demo: error: --seed must be >= 0")

"""Config files and `--config.a.b=value` overrides, typed against the locked config."""

import pytest

from jaxkd.cli import UsageError
from jaxkd.cli_config import apply_overrides, load_config, load_config_file
from jaxkd.experiment.config import add_terms, base_config, finalize, term

CONFIG_FILE = """
from jaxkd.experiment.config import add_terms, base_config, finalize, term

def get_config(arg="plain"):
    c = base_config()
    c.name = arg
    add_terms(c, term("kd", "kd", weight=0.9, hparams={"temperature": 4.0}))
    return finalize(c)
"""


def _config():
    c = base_config()
    add_terms(c, term("kd", "kd", weight=0.9, hparams={"temperature": 4.0}))
    return finalize(c)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(CONFIG_FILE)
    return str(path)


def test_file_with_and_without_argument(config_file):
    assert load_config_file(config_file).name == "plain"
    assert load_config_file(f"{config_file}:kd,resnet").name == "kd,resnet"


def test_loaded_config_is_locked(config_file):
    config = load_config(config_file)
    with pytest.raises(AttributeError):
        config.optimizer.lrr = 1.0


def test_overrides_are_typed_like_their_fields():
    config = apply_overrides(
        _config(),
        [
            "--config.optimizer.lr=1",  # int text, float field
            "--config.num_epochs", "3",  # space-separated value
            "--config.optimizer.nesterov",  # boolean flag form
            "--noconfig.data.augment",
            "--config.optimizer.decay_epochs=[10, 20]",
            "--config.objective.terms.kd.hparams.temperature=2",
            "--config.objective.terms.kd.adapter=hint",  # a field that defaults to None
            "--config.data.data_dir=/tmp/tfds",  # a str FieldReference that defaults to None
            "--config.teacher.model=",
        ],
    )  # fmt: skip
    assert config.optimizer.lr == 1.0 and isinstance(config.optimizer.lr, float)
    assert config.num_epochs == 3 and isinstance(config.num_epochs, int)
    assert config.optimizer.nesterov is True and config.data.augment is False
    assert config.optimizer.decay_epochs == [10, 20]
    assert config.objective.terms.kd.hparams.temperature == 2.0
    assert config.objective.terms.kd.adapter == "hint"
    assert config.data.data_dir == "/tmp/tfds"
    assert config.teacher.model == ""


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.optimizer.lrr=0.1", "unknown config key config.optimizer.lrr"),
        ("--config.objective.terms.dkd.weight=1", "config.objective.terms has: kd"),
        ("--config.objective.terms.kd.hparams.alpha=1", "unknown config key"),
        ("--config.optimizer.lr.x=1", "config.optimizer.lr is a float, not a section"),
        ("--config.optimizer.lr=fast", "config.optimizer.lr is of type float"),
        ("--config.num_epochs=1.5", "config.num_epochs is of type int"),
        ("--config.data.augment=maybe", "config.data.augment is of type bool"),
        ("--config.optimizer.decay_epochs=['a']", "expected a list of int"),
        ("--config.optimizer.decay_epochs=[1", "expected a list literal"),
        ("--workdir=x", "unknown argument --workdir"),
        ("stray", "unexpected argument 'stray'"),
    ],
)
def test_bad_overrides_name_what_was_expected(override, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace(".", r"\.")) as e:
        apply_overrides(_config(), [override])
    assert "\n" not in str(e.value)


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(UsageError) as e:
        apply_overrides(_config(), ["--config.optimizer.lrr=0.1"])
    assert "lr, momentum, name, nesterov" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; expected a Python file"):
        load_config_file(str(tmp_path / "nope.py"))


@pytest.mark.parametrize(
    "source, spec_suffix, message",
    [
        ("x = 1\n", "", "defines no get_config"),
        ("def get_config():\n    return {}\n", "", "must return an ml_collections.ConfigDict"),
        ("def get_config():\n    return None\n", ":arg", "takes no argument"),
    ],
)
def test_bad_config_files(tmp_path, source, spec_suffix, message):
    path = tmp_path / "bad.py"
    path.write_text(source)
    with pytest.raises(UsageError, match=message):
        load_config_file(f"{path}{spec_suffix}")

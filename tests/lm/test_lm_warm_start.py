"""The students' shared cross-entropy warm start: saved once, the start of every mode."""

import json
import os

import jax
import numpy as np
import pytest
from _lm_helpers import new_student, texts

from jaxkd.checkpoint import params_hash, restore_student
from jaxkd.cli_config import load_config
from jaxkd.engine import init_train_state
from jaxkd.lm.configs import check_lm_distill_config
from jaxkd.lm.experiment import _optimizer, run_lm_distill
from jaxkd.lm.warm_start import INFO_FILE, load_warm_start, save_warm_start, warm_start_dir

CORPUS = (texts(12, seed=0), texts(3, seed=1))


def tiny_config(modes, cold_modes=(), warm_start_steps=2):
    config = load_config("experiments/configs/lm_distill.py:tiny")
    with config.unlocked():
        config.modes = list(modes)
        config.cold_modes = list(cold_modes)
        config.student.warm_start_steps = warm_start_steps
    return config


@pytest.mark.parametrize("steps", [-1, 6, 9])
def test_warm_start_steps_outside_0_to_steps_raise_naming_the_key(steps, tmp_path):
    config = tiny_config(["scratch"], warm_start_steps=steps)  # student.steps is 6
    with pytest.raises(ValueError, match=r"config\.student\.warm_start_steps.*\[0, 6\)"):
        check_lm_distill_config(config)
    with pytest.raises(ValueError, match=r"config\.student\.warm_start_steps"):
        run_lm_distill(config, str(tmp_path), texts=CORPUS)
    assert not (tmp_path / "teacher").exists()  # rejected before any training


def test_unknown_cold_mode_raises_naming_the_key():
    with pytest.raises(ValueError, match=r"config\.cold_modes.*'kl'"):
        check_lm_distill_config(tiny_config(["scratch"], cold_modes=["kl"]))


def test_saved_warm_start_restores_the_whole_train_state(tmp_path):
    config = tiny_config(["scratch"])
    _, model = new_student()
    optimizer = _optimizer(config.student)
    state = init_train_state(model, optimizer, rng=1)
    # A state unlike a fresh one in every part: params, moments, step.
    state = state.replace(
        params=jax.tree.map(lambda p: p + 0.5, state.params),
        opt_state=jax.tree.map(lambda x: x + 1, state.opt_state),
        step=state.step + 2,
    )
    directory = warm_start_dir(str(tmp_path), config)
    fresh = init_train_state(model, optimizer, rng=1)
    assert load_warm_start(directory, fresh) is None
    info = save_warm_start(directory, state, config, {"bits_per_byte": 3.0})
    assert info["steps"] == 2 and info["params_sha256"] == params_hash(state.params)
    restored, read = load_warm_start(directory, fresh)
    with open(os.path.join(directory, INFO_FILE)) as f:
        assert read == json.load(f)
    assert type(restored) is type(state) and int(restored.step) == 2
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_warm_start_dir_follows_the_config(tmp_path):
    config = tiny_config(["scratch"])
    other = tiny_config(["gkd"], cold_modes=["gkd"])  # nor do modes, eval and reports
    with other.unlocked():
        other.data.eval_batch_size, other.data.report_windows = 2, 1
    longer = tiny_config(["scratch"])
    with longer.unlocked():
        longer.student.steps = 8  # the schedule spans all the steps
    same = warm_start_dir(str(tmp_path), config)
    assert warm_start_dir(str(tmp_path), other) == same
    assert warm_start_dir(str(tmp_path), longer) != same
    assert same.startswith(str(tmp_path / "warm_start"))


@pytest.mark.slow
def test_students_continue_from_the_saved_warm_start(tmp_path):
    workdir = str(tmp_path)
    results = run_lm_distill(tiny_config(["scratch"], ["scratch"]), workdir, texts=CORPUS)
    warm = results["warm_start"]
    row, cold = results["students"]["scratch"], results["cold_students"]["scratch"]
    # The saved checkpoint, read back alone, is what the warm row started from.
    directory = warm_start_dir(workdir, tiny_config(["scratch"]))
    saved = restore_student(directory)
    assert warm["steps"] == row["start_step"] == int(saved["step"]) == 2
    assert row["start_params_sha256"] == warm["params_sha256"] == params_hash(saved["params"])
    assert cold["start_step"] == 0 and cold["start_params_sha256"] != warm["params_sha256"]
    # Cross-entropy continued from the warm start is the cold run: same schedule and data.
    assert row["bits_per_byte"] == pytest.approx(cold["bits_per_byte"], rel=1e-5)
    assert row["bits_per_byte"] < warm["bits_per_byte"]
    assert row["divergences"] == pytest.approx(cold["divergences"], rel=1e-5)
    assert row["divergences"]["teacher_entropy"] > 0
    assert "from the CE warm start" in results["table"]
    # A rerun reuses the saved warm start instead of training it again.
    stamp = os.stat(os.path.join(directory, INFO_FILE)).st_mtime_ns
    again = run_lm_distill(tiny_config([]), workdir, texts=CORPUS)
    assert again["warm_start"]["params_sha256"] == warm["params_sha256"]
    assert os.stat(os.path.join(directory, INFO_FILE)).st_mtime_ns == stamp
    # warmup 0 is the cold path: random init, no warm start, no second column.
    cold_only = run_lm_distill(tiny_config(["scratch"], ["scratch"], 0), workdir, texts=CORPUS)
    assert cold_only["warm_start"] is None and cold_only["cold_students"] == {}
    assert cold_only["students"]["scratch"]["start_params_sha256"] == cold["start_params_sha256"]
    assert cold_only["students"]["scratch"]["bits_per_byte"] == cold["bits_per_byte"]
    assert "from random init" not in cold_only["table"]

"""The experiment's per-student divergences, against closed forms in float64."""

import math

import numpy as np
import pytest

from jaxkd.lm.report import held_out_divergences


def test_divergences_match_closed_forms_with_a_padded_column():
    p_t, p_s = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    pad = np.full((1, 1), -np.inf)
    teacher = np.concatenate([np.log(p_t)[None] + 3.0, pad], axis=1)  # shift: logits, not logs
    student = np.concatenate([np.log(p_s)[None] - 1.0, pad], axis=1)
    got = held_out_divergences(teacher, student)
    assert got["kl_teacher_student"] == pytest.approx(np.sum(p_t * np.log(p_t / p_s)), rel=1e-12)
    assert got["kl_student_teacher"] == pytest.approx(np.sum(p_s * np.log(p_s / p_t)), rel=1e-12)
    assert got["teacher_entropy"] == pytest.approx(math.log(2), rel=1e-12)
    assert got["student_entropy"] == pytest.approx(-np.sum(p_s * np.log(p_s)), rel=1e-12)


def test_divergences_average_rows_and_vanish_at_the_teacher():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)) * 3
    same = held_out_divergences(logits, logits)
    assert same["kl_teacher_student"] == same["kl_student_teacher"] == 0.0
    assert same["teacher_entropy"] == same["student_entropy"] > 0
    other = rng.normal(size=(5, 7))
    rows = [held_out_divergences(logits[i : i + 1], other[i : i + 1]) for i in range(5)]
    both = held_out_divergences(logits, other)
    for key, value in both.items():
        assert value == pytest.approx(np.mean([r[key] for r in rows]), rel=1e-12)


def test_divergences_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"`teacher_logits` \(2, 3\).*\(2, 4\)"):
        held_out_divergences(np.zeros((2, 3)), np.zeros((2, 4)))

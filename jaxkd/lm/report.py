"""The LM distillation experiment's report: per-student divergences, the markdown table."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from scipy.special import log_softmax


def lm_logits(model: Any, params: Any, state: Any, inputs: np.ndarray) -> np.ndarray:
    """float64 inference logits `[N · L, V]` of the windows `inputs` `[N, L]`.

    Args:
      model: the LM's `jaxkd.engine.Model` (its `apply`).
      params: its params; state: its model state.
      inputs: token windows.

    Returns:
      One row of logits per token.
    """
    logits = jax.jit(lambda p, x: model.apply(p, state, x, train=False)[0].logits)(params, inputs)
    logits = np.asarray(logits, np.float64)
    return logits.reshape(-1, logits.shape[-1])


def held_out_divergences(
    teacher_logits: np.ndarray, student_logits: np.ndarray
) -> dict[str, float]:
    """Mean per-token KLs between teacher and student, and both entropies, in nats.

    `KL(p_T ‖ p_S) = Σ_v p_T (log p_T − log p_S)` (what forward KL minimises),
    `KL(p_S ‖ p_T)` (reverse KL's objective), `H(p) = −Σ_v p log p`, averaged over the
    rows. They tell a student that matches the teacher's modes but is more confident
    than it (low `KL(p_S ‖ p_T)`, low `H(p_S)`) from one that covers the teacher.

    Args:
      teacher_logits: `[N, V]` logits of N tokens, float64 for accuracy; `-inf` entries
        (padded vocabulary) must be `-inf` in both.
      student_logits: `[N, V]` the student's logits of the same tokens.

    Returns:
      {"kl_teacher_student", "kl_student_teacher", "teacher_entropy", "student_entropy"}.

    References:
      Gu et al. 2024 (MiniLLM: reverse KL is mode-seeking); Agarwal et al. 2024 (GKD).
    """
    if teacher_logits.ndim != 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"`teacher_logits` {teacher_logits.shape} and `student_logits` "
            f"{student_logits.shape} must both be [tokens, vocab]."
        )
    log_t, log_s = log_softmax(teacher_logits, axis=-1), log_softmax(student_logits, axis=-1)

    def mean_under(log_p, value):  # E_p[value]; 0 · (−inf) = 0 where p is 0 (padding)
        return float((np.exp(log_p) * np.where(np.isneginf(log_p), 0.0, value)).sum(-1).mean())

    return {
        "kl_teacher_student": mean_under(log_t, log_t - np.where(np.isneginf(log_t), 0, log_s)),
        "kl_student_teacher": mean_under(log_s, log_s - np.where(np.isneginf(log_s), 0, log_t)),
        "teacher_entropy": mean_under(log_t, -log_t),
        "student_entropy": mean_under(log_s, -log_s),
    }


def _rate(tokens_per_second: float) -> str:
    # A split of one batch has no timed batch (the first one compiles): no rate, not "nan".
    return "–" if math.isnan(tokens_per_second) else f"{tokens_per_second:,.0f}"


def markdown_table(
    teacher: dict[str, Any],
    students: dict[str, dict[str, Any]],
    *,
    cold: dict[str, dict[str, Any]] | None = None,
    warm_start: dict[str, Any] | None = None,
) -> str:
    """The results as a markdown table, one row per model.

    Without `cold` rows there is one bits/byte column. With them there are two, the
    students trained from random init and those continued from the warm start, and the
    speeds are the cold-start run's (the same step, measured over all the steps).

    Args:
      teacher: the teacher's row ("params", "bits_per_byte", "train_tokens_per_second",
        "tokens_per_second").
      students: `{mode: row}` of `config.modes`.
      cold: `{mode: row}` of the modes also trained from random init.
      warm_start: the warm start's info (its "steps" and "bits_per_byte" go in a line
        under the table), or None.

    Returns:
      The markdown text.
    """
    if not cold:
        lines = ["| model | params | held-out bits/byte | train tok/s | eval tok/s |"]
        rows = [("teacher", [teacher], teacher)]
        rows += [(f"student: {m}", [r], r) for m, r in students.items()]
    else:
        lines = [
            "| model | params | held-out bits/byte, from random init | held-out bits/byte, "
            "from the CE warm start | train tok/s | eval tok/s |"
        ]
        rows = [("teacher", [teacher, None], teacher)]
        for mode in [*students, *(m for m in cold if m not in students)]:
            pair = [cold.get(mode), students.get(mode)]
            rows.append((f"student: {mode}", pair, pair[0] or pair[1]))
    lines.append("|---|---:|" + "---:|" * (len(rows[0][1]) + 2))
    for name, scores, row in rows:
        cells = [f"{r['bits_per_byte']:.3f}" if r else "–" for r in scores]
        lines.append(
            f"| {name} | {row['params']:,} | {' | '.join(cells)} | "
            f"{_rate(row['train_tokens_per_second'])} | {_rate(row['tokens_per_second'])} |"
        )
    if warm_start is not None:
        lines.append(
            f"\nCE warm start ({warm_start['steps']} steps): "
            f"{warm_start['bits_per_byte']:.3f} bits/byte."
        )
    return "\n".join(lines) + "\n"

"""The LM distillation experiment: a teacher, then one student per mode, as a table.

`run_lm_distill(config, workdir)` trains (or reloads) the teacher on the corpus, trains
a student per mode with the same steps, batch size and optimizer (what each mode trains
with, its top-k cache or its completions written once, is `jaxkd.lm.modes`), and
evaluates every model on the held-out split in bits per byte. With
`config.student.warm_start_steps = W > 0` every student first gets the same W steps of
cross-entropy (trained once, saved, see `jaxkd.lm.warm_start`) and each mode runs the
remaining steps with its own objective; `config.cold_modes` adds rows of modes trained
from random init for all the steps. Each row also gives the model's params, its training
throughput (target tokens per second of the mode's step, teacher and sampling included),
its own evaluation throughput and its held-out divergences from the teacher
(`jaxkd.lm.report`). The teacher, cache, completions and warm start are kept in
`workdir` and reused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from jaxkd.checkpoint import params_hash
from jaxkd.engine import TeacherState, TrainState, freeze_teacher, init_train_state
from jaxkd.lm import warm_start
from jaxkd.lm.cache_error import topk_cache_error
from jaxkd.lm.configs import check_lm_distill_config, transformer_config
from jaxkd.lm.distill import make_lm_eval_step, make_lm_train_step
from jaxkd.lm.models import build_lm, count_params, lm_model, load_lm, save_lm
from jaxkd.lm.modes import LM_KEYS, TeacherParts, mode_setup, only, student_batches, topk_codec
from jaxkd.lm.report import held_out_divergences, lm_logits, markdown_table
from jaxkd.lm.train import evaluate_lm, train_lm
from jaxkd.text import ByteTokenizer, PackedText, lm_eval_batches, lm_train_batches, pack_texts

log = logging.getLogger("jaxkd.lm")


def _optimizer(part: ml_collections.ConfigDict) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, part.lr, part.warmup_steps, max(part.steps, part.warmup_steps + 1), part.lr * 0.1
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))


def load_corpus(
    config: ml_collections.ConfigDict, texts: tuple[Sequence[str], Sequence[str]] | None = None
) -> tuple[PackedText, PackedText]:
    """Train and held-out windows: the config's TFDS text dataset, or given `texts`."""
    tokenizer, d = ByteTokenizer(), config.data
    if texts is not None:
        train, held_out = texts
    else:
        from jaxkd.text import read_texts

        kw = {"data_dir": d.data_dir or None}
        train = read_texts(
            d.dataset, d.train_split, max_documents=d.max_train_documents or None, **kw
        )
        held_out = read_texts(
            d.dataset, d.eval_split, max_documents=d.max_eval_documents or None, **kw
        )
    return pack_texts(train, tokenizer, d.seq_len), pack_texts(held_out, tokenizer, d.seq_len)


class _Runner:
    """The experiment's shared pieces: data, teacher, warm start, eval and the reports.

    What differs between rows (step, batches, teacher input) is `jaxkd.lm.modes`.
    """

    def __init__(self, config, workdir, train: PackedText, held_out: PackedText):
        self.c, self.workdir = config, workdir
        self.train, self.held_out = train, held_out
        self.vocab = ByteTokenizer.vocab_size
        self.warm_dir = warm_start.warm_start_dir(workdir, config)
        self._teacher_logits: dict[int, np.ndarray] = {}

    def evaluate(self, model, params, state) -> dict[str, float]:
        eval_step = jax.jit(make_lm_eval_step(model))
        batches = lm_eval_batches(self.held_out, batch_size=self.c.data.eval_batch_size)
        return evaluate_lm(eval_step, params, state, batches, num_bytes=self.held_out.num_bytes)

    def teacher(self) -> tuple[TeacherParts, dict[str, Any]]:
        path = os.path.join(self.workdir, "teacher")
        if os.path.isfile(os.path.join(path, "lm_model.json")):
            module, params, _ = load_lm(path)
            model = lm_model(module, vocab_size=self.vocab)
            with open(os.path.join(path, "train.json")) as f:
                info = json.load(f)
            return TeacherParts(module, model, TeacherState(params, model.state)), info
        t = self.c.teacher
        module = build_lm(transformer_config(t.model), seed=self.c.seed)
        model = lm_model(module, vocab_size=self.vocab)
        optimizer = _optimizer(t)
        step = make_lm_train_step(model, optimizer, loss=None)
        batches = iter(lm_train_batches(self.train, batch_size=t.batch_size, seed=self.c.seed))
        result = self._train(step, init_train_state(model, optimizer), None, batches, t.steps)
        save_lm(path, transformer_config(t.model), result.state.params, vocab_size=self.vocab)
        info = {"train_tokens_per_second": result.tokens_per_second, "seconds": result.seconds}
        with open(os.path.join(path, "train.json"), "w") as f:
            json.dump(info, f)
        return TeacherParts(module, model, freeze_teacher(result.state)), info

    def _train(self, step, state, teacher, batches, num_steps, *, name="teacher", prepare=None):
        return train_lm(
            step,
            state,
            teacher,
            batches,
            num_steps=num_steps,
            steps_per_call=self.c.steps_per_call,
            prepare=prepare or only(LM_KEYS),
            log=self._log(name),
        )

    def _log(self, name: str):
        every = max(1, self.c.steps_per_call)

        def write(step: int, metrics: dict[str, float]) -> None:
            if step % (every * 10) == 0:
                log.info("%s step %d loss %.4f", name, step, metrics["loss"])

        return write

    def student_parts(self):
        """The student's module, `Model` and optimizer (random init from `seed + 1`)."""
        module = build_lm(transformer_config(self.c.student.model), seed=self.c.seed + 1)
        return module, lm_model(module, vocab_size=self.vocab), _optimizer(self.c.student)

    def warm_start(self, model, optimizer) -> tuple[TrainState, dict[str, Any]]:
        """The state after W cross-entropy steps: trained and saved once, then restored."""
        target = init_train_state(model, optimizer, rng=self.c.seed + 1)
        loaded = warm_start.load_warm_start(self.warm_dir, target)
        if loaded is not None:
            return loaded
        result = self._train(
            make_lm_train_step(model, optimizer, loss=None),
            target,
            None,
            iter(student_batches(self.c, self.train)),
            self.c.student.warm_start_steps,
            name="warm start",
        )
        info = {
            "params": count_params(result.state.params),
            "train_tokens_per_second": result.tokens_per_second,
            "train_seconds": result.seconds,
            **self.evaluate(model, result.state.params, result.state.model_state),
        }
        warm_start.save_warm_start(self.warm_dir, result.state, self.c, info)
        # Every mode, the first included, starts from the saved state, not the live one.
        return self.warm_start(model, optimizer)

    def student(
        self, mode: str, teacher_parts: TeacherParts, *, warm: bool, name: str
    ) -> dict[str, Any]:
        """One row: `mode` trained from the warm start (`warm`) or from random init."""
        parts = self.student_parts()
        _, model, optimizer = parts
        skip = self.c.student.warm_start_steps if warm else 0
        setup = mode_setup(mode, self.c, self.workdir, self.train, parts, teacher_parts)
        if warm:
            state, _ = self.warm_start(model, optimizer)
        else:
            state = init_train_state(model, optimizer, rng=self.c.seed + 1)
        extra = dict(setup.extra)
        extra["start_step"] = int(state.step)
        extra["start_params_sha256"] = params_hash(state.params)
        if mode == "offline_topk":
            # The cache's errors against the starting student (pessimistic when it is random:
            # large log-ratios) here, and against the trained one below.
            extra["cache"] = {
                **self.cache_report(teacher_parts, model, state.params),
                **extra["cache"],
            }
        result = self._train(
            setup.step,
            state,
            setup.teacher,
            iter(setup.data[skip:]),
            self.c.student.steps - skip,
            name=name,
            prepare=setup.prepare,
        )
        metrics = self.evaluate(model, result.state.params, result.state.model_state)
        extra["divergences"] = self.divergences(teacher_parts, model, result.state.params)
        if mode == "offline_topk":
            trained = self.cache_report(teacher_parts, model, result.state.params)
            extra["cache_trained_student"] = trained
        return {
            "params": count_params(result.state.params),
            "train_tokens_per_second": result.tokens_per_second,
            "train_seconds": result.seconds,
            **metrics,
            **extra,
        }

    def teacher_logits(self, teacher: TeacherParts, windows: int) -> np.ndarray:
        """The teacher's held-out logits, computed once per window count for all rows."""
        if windows not in self._teacher_logits:
            params, state = teacher.state.params, teacher.state.state
            inputs = self.held_out.inputs[:windows]
            self._teacher_logits[windows] = lm_logits(teacher.model, params, state, inputs)
        return self._teacher_logits[windows]

    def divergences(self, teacher_parts: TeacherParts, student, params) -> dict[str, float]:
        """Held-out KLs and entropies of the student at `params` against the teacher."""
        n = self.c.data.report_windows
        real = np.asarray(self.held_out.loss_mask[:n]).reshape(-1) > 0
        s_logits = lm_logits(student, params, student.state, self.held_out.inputs[:n])
        return held_out_divergences(self.teacher_logits(teacher_parts, n)[real], s_logits[real])

    def cache_report(self, teacher_parts: TeacherParts, student, params) -> dict[str, float]:
        """The cache's KL errors on held-out windows, against `student` at `params`."""
        n = self.c.cache.error_windows
        s_logits = lm_logits(student, params, student.state, self.held_out.inputs[:n])
        return topk_cache_error(self.teacher_logits(teacher_parts, n), s_logits, topk_codec(self.c))


def run_lm_distill(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    texts: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Runs the experiment; writes `results.json` and `results.md` in `workdir`.

    Every student takes `config.student.steps` optimizer steps of the same batch size and
    schedule. With `student.warm_start_steps` W > 0 the first W of the `config.modes`
    students are one shared cross-entropy run, and each mode of `config.cold_modes` is
    also trained from random init; with W = 0 the `config.modes` students start cold.

    Args:
      config: `jaxkd.lm.configs.lm_distill_config()` (possibly overridden).
      workdir: where the teacher, cache, completions, warm start and results go.
      texts: optional (train documents, held-out documents) instead of the TFDS corpus.

    Returns:
      {"teacher": row, "warm_start": info or None, "students": {mode: row},
      "cold_students": {mode: row}, "table": markdown}. A student row's `start_step` and
      `start_params_sha256` say what it started from (the warm start's `steps` and
      `params_sha256`, or step 0 and the random init).

    References:
      Hinton et al. 2015; Kim & Rush 2016; Agarwal et al. 2024 (GKD); Gu et al. 2024
      (MiniLLM).
    """
    check_lm_distill_config(config)
    os.makedirs(workdir, exist_ok=True)
    train, held_out = load_corpus(config, texts)
    runner = _Runner(config, workdir, train, held_out)
    parts, info = runner.teacher()
    teacher = parts.state
    teacher_row = {
        "params": count_params(teacher.params),
        "train_tokens_per_second": info["train_tokens_per_second"],
        "train_seconds": info["seconds"],
        **runner.evaluate(parts.model, teacher.params, teacher.state),
    }
    log.info("teacher: %.4f bits/byte", teacher_row["bits_per_byte"])
    warm = config.student.warm_start_steps > 0
    results: dict[str, Any] = {"teacher": teacher_row, "warm_start": None}
    if warm:
        results["warm_start"] = runner.warm_start(*runner.student_parts()[1:])[1]
    for key, modes, from_warm in [
        ("students", config.modes, warm),
        ("cold_students", config.cold_modes if warm else [], False),
    ]:
        results[key] = {}
        for mode in modes:
            name = mode if from_warm or not warm else f"{mode} (cold start)"
            results[key][mode] = runner.student(mode, parts, warm=from_warm, name=name)
            log.info("%s: %.4f bits/byte", name, results[key][mode]["bits_per_byte"])
    results["config"] = config.to_dict()
    results["table"] = markdown_table(
        teacher_row,
        results["students"],
        cold=results["cold_students"],
        warm_start=results["warm_start"],
    )
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(results["table"])
    return results

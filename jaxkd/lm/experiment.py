"""The LM distillation experiment: a teacher, then one student per mode, as a table.

`run_lm_distill(config, workdir)` trains (or reloads) the teacher on the corpus, writes
its top-k cache and its completions once, trains a student per mode with the same steps,
batch size and optimizer, and evaluates every model on the held-out split in bits per
byte. Each row also gives the model's params, its training throughput (target tokens per
second of the mode's step, teacher and sampling included) and its own evaluation
throughput. The teacher, cache and completions are kept in `workdir` and reused.
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

from jaxkd.engine import TeacherState, freeze_teacher, init_train_state
from jaxkd.lm import cache as cache_lib
from jaxkd.lm import sequence_level
from jaxkd.lm.cache_error import topk_cache_error
from jaxkd.lm.configs import transformer_config
from jaxkd.lm.distill import make_lm_eval_step, make_lm_train_step
from jaxkd.lm.models import build_lm, count_params, lm_model, load_lm, save_lm
from jaxkd.lm.on_policy import make_gkd_step, prompt_batch
from jaxkd.lm.topk_codec import TopKCodec
from jaxkd.lm.train import evaluate_lm, train_lm
from jaxkd.text import ByteTokenizer, PackedText, lm_eval_batches, lm_train_batches, pack_texts

log = logging.getLogger("jaxkd.lm")
LM_KEYS = ("inputs", "targets", "loss_mask")
GKD_KEYS = (*LM_KEYS, "prompts", "prompt_lengths")


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


def _only(keys: Sequence[str]):
    return lambda batch: {k: batch[k] for k in keys}


class _Runner:
    """The experiment's shared pieces: data, teacher, eval, and one method per mode."""

    def __init__(self, config, workdir, train: PackedText, held_out: PackedText):
        self.c, self.workdir = config, workdir
        self.train, self.held_out = train, held_out
        self.vocab = ByteTokenizer.vocab_size
        self.tokenizer = ByteTokenizer()

    def batches(self, seed: int):
        return iter(lm_train_batches(self.train, batch_size=self.c.student.batch_size, seed=seed))

    def evaluate(self, model, params, state) -> dict[str, float]:
        eval_step = jax.jit(make_lm_eval_step(model))
        batches = lm_eval_batches(self.held_out, batch_size=self.c.data.eval_batch_size)
        return evaluate_lm(eval_step, params, state, batches, num_bytes=self.held_out.num_bytes)

    def teacher(self) -> tuple[Any, Any, TeacherState, dict[str, Any]]:
        path = os.path.join(self.workdir, "teacher")
        if os.path.isfile(os.path.join(path, "lm_model.json")):
            module, params, _ = load_lm(path)
            model = lm_model(module, vocab_size=self.vocab)
            info = json.load(open(os.path.join(path, "train.json")))
            return module, model, TeacherState(params, model.state), info
        t = self.c.teacher
        module = build_lm(transformer_config(t.model), seed=self.c.seed)
        model = lm_model(module, vocab_size=self.vocab)
        optimizer = _optimizer(t)
        step = make_lm_train_step(model, optimizer, loss=None)
        batches = iter(lm_train_batches(self.train, batch_size=t.batch_size, seed=self.c.seed))
        result = train_lm(
            step,
            init_train_state(model, optimizer),
            None,
            batches,
            num_steps=t.steps,
            steps_per_call=self.c.steps_per_call,
            prepare=_only(LM_KEYS),
            log=self._log("teacher"),
        )
        save_lm(path, transformer_config(t.model), result.state.params, vocab_size=self.vocab)
        info = {"train_tokens_per_second": result.tokens_per_second, "seconds": result.seconds}
        with open(os.path.join(path, "train.json"), "w") as f:
            json.dump(info, f)
        return module, model, freeze_teacher(result.state), info

    def _log(self, name: str):
        every = max(1, self.c.steps_per_call)

        def write(step: int, metrics: dict[str, float]) -> None:
            if step % (every * 10) == 0:
                log.info("%s step %d loss %.4f", name, step, metrics["loss"])

        return write

    def cache(self, teacher: TeacherState, teacher_model) -> cache_lib.TopKCache:
        path = os.path.join(self.workdir, "cache")
        if not os.path.isfile(os.path.join(path, cache_lib.META_FILE)):
            cache_lib.write_topk_cache(
                path,
                self.train,
                teacher,
                teacher_model.apply,
                self.codec(),
                batch_size=self.c.student.batch_size,
                max_windows=self.c.student.steps * self.c.student.batch_size,
            )
        return cache_lib.TopKCache(path)

    def codec(self) -> TopKCodec:
        k = self.c.cache
        return TopKCodec(
            vocab_size=self.c.student.model.vocab_size,
            k=k.k,
            exact_top=k.exact_top,
            top_bits=k.top_bits,
            value_bits=k.value_bits,
            tail_bits=k.tail_bits,
            alpha=k.alpha,
        )

    def completions(self, teacher_module, teacher: TeacherState):
        path = os.path.join(self.workdir, "completions")
        s = self.c.sequence_level
        if not os.path.isfile(os.path.join(path, sequence_level.META_FILE)):
            sequence_level.write_completions(
                path,
                teacher_module,
                teacher.params,
                self.train,
                prompt_len=s.prompt_len,
                max_new_tokens=self.c.data.seq_len + 1 - s.prompt_len,
                pad_id=self.tokenizer.pad_id,
                eos_id=self.tokenizer.eos_id,
                vocab_size=self.vocab,
                temperature=s.temperature,
                top_p=s.top_p,
                batch_size=s.batch_size,
                num_prompts=s.num_prompts,
                seed=self.c.seed,
            )
        return sequence_level.CompletionSource(path)

    def student(self, mode: str, teacher_module, teacher_model, teacher: TeacherState):
        s, kd = self.c.student, self.c.kd
        module = build_lm(transformer_config(s.model), seed=self.c.seed + 1)
        model = lm_model(module, vocab_size=self.vocab)
        optimizer = _optimizer(s)
        t_state, keys, extra = None, LM_KEYS, {}
        batches = self.batches(self.c.seed + 1)
        hparams = {"temperature": kd.temperature}
        if mode == "scratch":
            step = make_lm_train_step(model, optimizer, loss=None)
        elif mode in ("forward_kl", "reverse_kl"):
            step = make_lm_train_step(
                model,
                optimizer,
                loss=mode,
                teacher_apply=teacher_model,
                ce_weight=kd.ce_weight,
                hparams=hparams,
            )
            t_state = teacher
        elif mode in ("gkd", "on_policy"):
            g = self.c[mode]
            step = make_gkd_step(
                module,
                model,
                optimizer,
                teacher_apply=teacher_model,
                lam=g.lam,
                beta=g.beta,
                temperature=kd.temperature,
                sample_temperature=g.get("sample_temperature", 1.0),
                pad_id=self.tokenizer.pad_id,
                eos_id=self.tokenizer.eos_id,
                vocab_size=self.vocab,
            )
            prompt_len = self.c.sequence_level.prompt_len
            batches = (prompt_batch(b, prompt_len) for b in batches)
            t_state, keys = teacher, GKD_KEYS
        elif mode == "offline_topk":
            cache = self.cache(teacher, teacher_model)
            # Errors against the untrained student (large log-ratios: pessimistic) here, and
            # against the trained one below.
            extra = {
                "cache": {
                    **self.cache_report(teacher, teacher_model, model, model.params),
                    "k": cache.codec.k,
                }
            }
            step = make_lm_train_step(
                model,
                optimizer,
                loss="sparse_forward_kl",
                ce_weight=kd.ce_weight,
                hparams={**hparams, "tail": self.c.cache.tail},
            )
            batches = iter(
                cache_lib.cached_train_batches(cache, batch_size=s.batch_size, seed=self.c.seed + 1)
            )
            keys = (*LM_KEYS, cache_lib.TOPK_LOGPROBS, cache_lib.TOPK_IDS)
        elif mode == "sequence_level":
            source = self.completions(teacher_module, teacher)
            extra = {"generation_tokens_per_second": source.meta["tokens_per_second"]}
            step = make_lm_train_step(model, optimizer, loss=None)
            batches = iter(
                sequence_level.completion_train_batches(
                    source, batch_size=s.batch_size, seed=self.c.seed + 1
                )
            )
        else:
            raise ValueError(f"unknown mode {mode!r} in `config.modes`.")
        result = train_lm(
            step,
            init_train_state(model, optimizer, rng=self.c.seed + 1),
            t_state,
            batches,
            num_steps=s.steps,
            steps_per_call=self.c.steps_per_call,
            prepare=_only(keys),
            log=self._log(mode),
        )
        metrics = self.evaluate(model, result.state.params, result.state.model_state)
        if mode == "offline_topk":
            trained = self.cache_report(teacher, teacher_model, model, result.state.params)
            extra["cache_trained_student"] = trained
        return {
            "params": count_params(result.state.params),
            "train_tokens_per_second": result.tokens_per_second,
            "train_seconds": result.seconds,
            **metrics,
            **extra,
        }

    def cache_report(self, teacher: TeacherState, teacher_model, student, params):
        """The cache's KL errors on held-out windows, against `student` at `params`."""
        windows = self.held_out.inputs[: self.c.cache.error_windows]

        def logits_of(model, model_params, model_state):
            out = jax.jit(lambda p, x: model.apply(p, model_state, x, train=False)[0].logits)
            logits = np.asarray(out(model_params, windows), np.float64)
            return logits.reshape(-1, logits.shape[-1])

        t_logits = logits_of(teacher_model, teacher.params, teacher.state)
        s_logits = logits_of(student, params, student.state)
        return topk_cache_error(t_logits, s_logits, self.codec())


def run_lm_distill(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    texts: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Runs the experiment; writes `results.json` and `results.md` in `workdir`.

    Args:
      config: `jaxkd.lm.configs.lm_distill_config()` (possibly overridden).
      workdir: where the teacher, cache, completions and results go.
      texts: optional (train documents, held-out documents) instead of the TFDS corpus.

    Returns:
      {"teacher": row, "students": {mode: row}, "table": markdown}.

    References:
      Hinton et al. 2015; Kim & Rush 2016; Agarwal et al. 2024 (GKD).
    """
    os.makedirs(workdir, exist_ok=True)
    train, held_out = load_corpus(config, texts)
    runner = _Runner(config, workdir, train, held_out)
    t_module, t_model, teacher, info = runner.teacher()
    teacher_row = {
        "params": count_params(teacher.params),
        "train_tokens_per_second": info["train_tokens_per_second"],
        "train_seconds": info["seconds"],
        **runner.evaluate(t_model, teacher.params, teacher.state),
    }
    log.info("teacher: %.4f bits/byte", teacher_row["bits_per_byte"])
    students = {}
    for mode in config.modes:
        students[mode] = runner.student(mode, t_module, t_model, teacher)
        log.info("%s: %.4f bits/byte", mode, students[mode]["bits_per_byte"])
    results = {"teacher": teacher_row, "students": students, "config": config.to_dict()}
    results["table"] = markdown_table(teacher_row, students)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(results["table"])
    return results


def markdown_table(teacher: dict[str, Any], students: dict[str, dict[str, Any]]) -> str:
    """The results as a markdown table: one row per model."""
    lines = [
        "| model | params | held-out bits/byte | train tok/s | eval tok/s |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [("teacher", teacher), *((f"student: {m}", r) for m, r in students.items())]
    for name, row in rows:
        lines.append(
            f"| {name} | {row['params']:,} | {row['bits_per_byte']:.3f} | "
            f"{row['train_tokens_per_second']:,.0f} | {row['tokens_per_second']:,.0f} |"
        )
    return "\n".join(lines) + "\n"

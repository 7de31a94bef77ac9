"""What each row of the LM experiment trains with: its step, its batches, its teacher input.

`mode_setup` turns a mode of `jaxkd.lm.configs.MODES` into a `ModeSetup`, building what
the mode needs first: online token KD ("forward_kl", "reverse_kl") and on-policy GKD
("gkd", "on_policy") call the live teacher every step; "offline_topk" trains from the
teacher's top-k cache and "sequence_level" from its completions, both written once in
the workdir (`teacher_cache`, `teacher_completions`) and reused; "scratch" needs none.
Every mode that reads the corpus reads `student_batches`, the stream the warm start also
trained on, so a warm-started row continues it at batch W.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grain
import ml_collections

from jaxkd.engine import Model, TeacherState
from jaxkd.engine.step import TrainStep
from jaxkd.lm import cache as cache_lib
from jaxkd.lm import sequence_level
from jaxkd.lm.configs import MODES
from jaxkd.lm.distill import make_lm_train_step
from jaxkd.lm.on_policy import make_gkd_step, prompt_batch
from jaxkd.lm.topk_codec import TopKCodec
from jaxkd.models.transformer import Transformer
from jaxkd.text import ByteTokenizer, PackedText, lm_train_batches

LM_KEYS = ("inputs", "targets", "loss_mask")
GKD_KEYS = (*LM_KEYS, "prompts", "prompt_lengths")


class TeacherParts(NamedTuple):
    """The teacher as the modes use it: its module (to sample), `Model` and frozen state."""

    module: Transformer
    model: Model
    state: TeacherState


class ModeSetup(NamedTuple):
    """How one mode trains: its step, its batch stream, and what it adds to its row."""

    step: TrainStep
    data: grain.MapDataset  # a warm-started student reads it from batch W on
    prepare: Callable[[dict], dict]
    teacher: TeacherState | None
    extra: dict[str, Any]


def only(keys: Sequence[str]) -> Callable[[dict], dict]:
    """The batch cut to `keys`: what the step reads, so nothing else is sent to devices."""
    return lambda batch: {k: batch[k] for k in keys}


def student_batches(config: ml_collections.ConfigDict, train: PackedText) -> grain.MapDataset:
    """The students' one stream of corpus batches (seed `config.seed + 1`)."""
    return lm_train_batches(train, batch_size=config.student.batch_size, seed=config.seed + 1)


def topk_codec(config: ml_collections.ConfigDict) -> TopKCodec:
    """The `TopKCodec` of `config.cache` for the student's vocabulary."""
    fields = ("k", "exact_top", "top_bits", "value_bits", "tail_bits", "alpha")
    return TopKCodec(
        vocab_size=config.student.model.vocab_size, **{f: config.cache[f] for f in fields}
    )


def teacher_cache(
    config: ml_collections.ConfigDict, workdir: str, train: PackedText, teacher: TeacherParts
) -> cache_lib.TopKCache:
    """The teacher's top-k cache of the windows the students read, written once.

    Args:
      config: the experiment config (`cache`, `student.steps` and `batch_size`).
      workdir: the experiment's directory; the cache is `workdir/cache`.
      train: the training windows.
      teacher: the teacher.

    Returns:
      The `TopKCache` (only the first `steps · batch_size` windows are cached).

    References:
      Arcee AI DistillKit (offline top-k logits).
    """
    path = os.path.join(workdir, "cache")
    if not os.path.isfile(os.path.join(path, cache_lib.META_FILE)):
        cache_lib.write_topk_cache(
            path,
            train,
            teacher.state,
            teacher.model.apply,
            topk_codec(config),
            batch_size=config.student.batch_size,
            max_windows=config.student.steps * config.student.batch_size,
        )
    return cache_lib.TopKCache(path)


def teacher_completions(
    config: ml_collections.ConfigDict, workdir: str, train: PackedText, teacher: TeacherParts
) -> sequence_level.CompletionSource:
    """The teacher's completions of the windows' prompts, sampled once.

    Args:
      config: the experiment config (`sequence_level`, `data.seq_len`, `seed`).
      workdir: the experiment's directory; the completions are `workdir/completions`.
      train: the windows whose first `sequence_level.prompt_len` tokens are the prompts.
      teacher: the teacher.

    Returns:
      The `CompletionSource`, windows of `data.seq_len` tokens.

    References:
      Kim & Rush 2016, "Sequence-Level Knowledge Distillation".
    """
    path = os.path.join(workdir, "completions")
    s, tokenizer = config.sequence_level, ByteTokenizer()
    if not os.path.isfile(os.path.join(path, sequence_level.META_FILE)):
        sequence_level.write_completions(
            path,
            teacher.module,
            teacher.state.params,
            train,
            prompt_len=s.prompt_len,
            max_new_tokens=config.data.seq_len + 1 - s.prompt_len,
            pad_id=tokenizer.pad_id,
            eos_id=tokenizer.eos_id,
            vocab_size=tokenizer.vocab_size,
            temperature=s.temperature,
            top_p=s.top_p,
            batch_size=s.batch_size,
            num_prompts=s.num_prompts,
            seed=config.seed,
        )
    return sequence_level.CompletionSource(path)


def mode_setup(
    mode: str,
    config: ml_collections.ConfigDict,
    workdir: str,
    train: PackedText,
    student: tuple[Transformer, Model, Any],
    teacher: TeacherParts,
) -> ModeSetup:
    """The step, batches and teacher argument of one row of the experiment.

    Args:
      mode: one of `jaxkd.lm.configs.MODES`.
      config: the experiment config (`kd`, the mode's own entry, `cache`,
        `sequence_level`).
      workdir: where the cache and completions are kept.
      train: the training windows.
      student: the student's (module, `Model`, optimizer).
      teacher: the teacher.

    Returns:
      The `ModeSetup`; its `extra` goes into the row (the cache's k, the completions'
      sampling speed).

    Raises:
      ValueError: `mode` is not one of `MODES`.

    References:
      Hinton et al. 2015; Kim & Rush 2016; Agarwal et al. 2024 (GKD); Gu et al. 2024
      (MiniLLM).
    """
    module, model, optimizer = student
    kd, tokenizer = config.kd, ByteTokenizer()
    hparams = {"temperature": kd.temperature}
    if mode == "scratch":
        step = make_lm_train_step(model, optimizer, loss=None)
        return ModeSetup(step, student_batches(config, train), only(LM_KEYS), None, {})
    if mode in ("forward_kl", "reverse_kl"):
        step = make_lm_train_step(
            model,
            optimizer,
            loss=mode,
            teacher_apply=teacher.model,
            ce_weight=kd.ce_weight,
            hparams=hparams,
        )
        return ModeSetup(step, student_batches(config, train), only(LM_KEYS), teacher.state, {})
    if mode in ("gkd", "on_policy"):
        g = config[mode]
        step = make_gkd_step(
            module,
            model,
            optimizer,
            teacher_apply=teacher.model,
            lam=g.lam,
            beta=g.beta,
            temperature=kd.temperature,
            sample_temperature=g.get("sample_temperature", 1.0),
            pad_id=tokenizer.pad_id,
            eos_id=tokenizer.eos_id,
            vocab_size=tokenizer.vocab_size,
        )
        prompt_len = config.sequence_level.prompt_len
        prepare = lambda b: only(GKD_KEYS)(prompt_batch(b, prompt_len))
        return ModeSetup(step, student_batches(config, train), prepare, teacher.state, {})
    seed, batch_size = config.seed + 1, config.student.batch_size
    if mode == "offline_topk":
        cache = teacher_cache(config, workdir, train, teacher)
        step = make_lm_train_step(
            model,
            optimizer,
            loss="sparse_forward_kl",
            ce_weight=kd.ce_weight,
            hparams={**hparams, "tail": config.cache.tail},
        )
        data = cache_lib.cached_train_batches(cache, batch_size=batch_size, seed=seed)
        keys = (*LM_KEYS, cache_lib.TOPK_LOGPROBS, cache_lib.TOPK_IDS)
        return ModeSetup(step, data, only(keys), None, {"cache": {"k": cache.codec.k}})
    if mode == "sequence_level":
        source = teacher_completions(config, workdir, train, teacher)
        extra = {"generation_tokens_per_second": source.meta["tokens_per_second"]}
        step = make_lm_train_step(model, optimizer, loss=None)
        data = sequence_level.completion_train_batches(source, batch_size=batch_size, seed=seed)
        return ModeSetup(step, data, only(LM_KEYS), None, extra)
    raise ValueError(f"unknown mode {mode!r} in `config.modes`; known: {list(MODES)}.")

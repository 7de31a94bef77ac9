"""Tiny corpus, model sizes and batches shared by the LM distillation tests."""

import jax
import numpy as np
from flax import nnx

from jaxkd.engine import TeacherState
from jaxkd.lm import build_lm, lm_model
from jaxkd.lm.configs import lm_distill_config, transformer_config
from jaxkd.text import ByteTokenizer, PackedText, pack_texts

VOCAB = ByteTokenizer.vocab_size  # 259 ids; the models have one padded row (260)
PAD, EOS = ByteTokenizer.pad_id, ByteTokenizer.eos_id
# The experiment's own toy sizes (`lm_distill_config(tiny=True)`).
_TINY = lm_distill_config(tiny=True)
SEQ_LEN = _TINY.data.seq_len
TEACHER = transformer_config(_TINY.teacher.model)
STUDENT = transformer_config(_TINY.student.model)
LM_KEYS = ("inputs", "targets", "loss_mask")


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["def", "return", "self", "x", "if", "for", "in", "import", "None", "(", ")", ":"]
    return [" ".join(rng.choice(words, size=12)) + "\n" for _ in range(n)]


def packed_corpus(n: int = 40, seed: int = 0):
    return pack_texts(texts(n, seed), ByteTokenizer(), SEQ_LEN)


def first_windows(packed: PackedText, n: int) -> PackedText:
    """The first `n` windows of `packed` (what a cache or completions of n windows hold)."""
    return PackedText(packed.inputs[:n], packed.targets[:n], packed.loss_mask[:n], 0, 0)


def peaked_teacher():
    """(module, Model, TeacherState) with random weights scaled up, so its distributions
    are peaked and differ between positions (the 0.02 init is nearly uniform)."""
    module = build_lm(TEACHER, seed=0)
    state = nnx.state(module, nnx.Param)
    params = nnx.to_pure_dict(state)
    keys = iter(jax.random.split(jax.random.key(3), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape), params)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(module, state)
    model = lm_model(module, vocab_size=VOCAB)
    return module, model, TeacherState(model.params, model.state)


def new_student(seed: int = 1):
    module = build_lm(STUDENT, seed=seed)
    return module, lm_model(module, vocab_size=VOCAB)


def batch_of(packed, start: int = 0, n: int = 4, keys=LM_KEYS) -> dict:
    return {k: np.stack([packed[i][k] for i in range(start, start + n)]) for k in keys}

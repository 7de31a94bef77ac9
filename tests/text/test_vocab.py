"""Vocabulary checks and padded-vocabulary masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.losses import forward_kl
from jaxkd.text import check_vocab_compatible, mask_padded_vocab


def test_check_vocab_compatible():
    assert check_vocab_compatible(259, 259) == 259
    assert check_vocab_compatible(152_064, 151_936, 151_665) == 151_665
    with pytest.raises(ValueError, match=r"152064.*151936"):
        check_vocab_compatible(152_064, 151_936)
    with pytest.raises(ValueError, match=r"Teacher vocab_size 32000 and student vocab_size 259"):
        check_vocab_compatible(32_000, 259, 259 + 1)
    with pytest.raises(ValueError, match="teacher_vocab_size"):
        check_vocab_compatible(0, 259)
    with pytest.raises(ValueError, match="tokenizer_vocab_size"):
        check_vocab_compatible(259, 259, 2.5)


def test_mask_padded_vocab_values_and_widths():
    logits = jnp.arange(12.0).reshape(2, 6)
    out = mask_padded_vocab(logits, 4)
    np.testing.assert_array_equal(out[:, :4], logits[:, :4])
    assert np.isneginf(np.asarray(out[:, 4:])).all()
    narrow = mask_padded_vocab(logits, 4, vocab_size=5)
    wide = mask_padded_vocab(logits, 4, vocab_size=8)
    assert narrow.shape == (2, 5) and wide.shape == (2, 8)
    np.testing.assert_array_equal(wide[:, :5], narrow)
    assert np.isneginf(np.asarray(wide[:, 4:])).all()
    assert mask_padded_vocab(logits.astype(jnp.bfloat16), 4).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="real_vocab_size"):
        mask_padded_vocab(logits, 7)
    with pytest.raises(ValueError, match="logits"):
        mask_padded_vocab(jnp.arange(6), 4)


def test_masked_padding_leaves_the_distillation_loss_of_the_real_vocabulary():
    # A teacher padded to 10 logits and a student padded to 8, real vocabulary 6.
    teacher = jax.random.normal(jax.random.key(0), (2, 3, 10))
    student = jax.random.normal(jax.random.key(1), (2, 3, 8))
    t = mask_padded_vocab(teacher, 6, vocab_size=8)
    s = mask_padded_vocab(student, 6)
    loss = jax.jit(forward_kl)(s, t)
    reference = jax.jit(forward_kl)(student[..., :6], teacher[..., :6])
    np.testing.assert_allclose(loss, reference, rtol=1e-5)
    grad = jax.jit(jax.grad(lambda x: forward_kl(mask_padded_vocab(x, 6), t)))(student)
    assert np.isfinite(np.asarray(grad)).all()
    assert np.abs(np.asarray(grad[..., 6:])).max() == 0.0

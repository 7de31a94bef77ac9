"""ShuffleNet units against numpy versions of the reference's shortcut and split logic."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxkd.models._layers import channel_shuffle
from jaxkd.models.shufflenet import ShuffleV1Block, ShuffleV2Basic

# One compiled program per unit is cheaper than compiling each op eagerly.
_call = nnx.jit(lambda block, x: block(x))


def _avg_pool_3x3_s2_p1_count_pad(x):
    """PyTorch AvgPool2d(3, stride=2, padding=1) (count_include_pad=True) on NHWC."""
    b, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, (h + 1) // 2, (w + 1) // 2, c), x.dtype)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = xp[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].sum(axis=(1, 2)) / 9
    return out


def test_v1_stride2_unit_concatenates_branch_and_pooled_input():
    block = ShuffleV1Block(24, 48 - 24, 2, 3, dtype=None, rngs=nnx.Rngs(0))
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 8, 8, 24)))
    out, preact = _call(block, x)
    assert out.shape == preact.shape == (2, 4, 4, 48)
    np.testing.assert_allclose(preact[..., 24:], _avg_pool_3x3_s2_p1_count_pad(x), atol=1e-6)
    np.testing.assert_allclose(out, np.maximum(preact, 0), atol=0)


def test_v1_stride1_unit_adds_identity():
    block = ShuffleV1Block(48, 48, 1, 3, dtype=None, rngs=nnx.Rngs(0))
    assert block.g1 == 3  # grouped first 1x1 once past the 24-channel stem
    # With the last BN scaled to zero the branch outputs zeros: what is left is the skip.
    block.bn3.scale.set_value(jnp.zeros_like(block.bn3.scale.get_value()))
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 4, 4, 48)))
    out, preact = _call(block, x)
    np.testing.assert_allclose(preact, x, atol=1e-6)
    np.testing.assert_allclose(out, np.maximum(x, 0), atol=1e-6)


def test_v2_unit_passes_first_half_and_shuffles():
    block = ShuffleV2Basic(16, dtype=None, rngs=nnx.Rngs(0))
    x = np.asarray(jax.random.normal(jax.random.key(2), (2, 4, 4, 16)))
    out, preact = _call(block, x)
    np.testing.assert_array_equal(preact[..., :8], x[..., :8])
    unshuffled = np.concatenate([x[..., :8], np.maximum(preact[..., 8:], 0)], axis=-1)
    np.testing.assert_allclose(out, channel_shuffle(unshuffled, 2), atol=0)
    # After the 2-group shuffle, the untouched half lands on the even channels.
    np.testing.assert_array_equal(out[..., 0::2], x[..., :8])

"""PyTorch-compatible layer semantics of jaxkd.models._layers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxkd.models import _layers


def test_channel_shuffle_matches_nchw_reference():
    n, h, w, c, g = 2, 3, 4, 12, 3
    x = np.arange(n * h * w * c, dtype=np.float32).reshape(n, h, w, c)
    nchw = x.transpose(0, 3, 1, 2)
    # ShuffleNet reference: view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4).reshape(N, C, H, W)
    ref = nchw.reshape(n, g, c // g, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)
    out = np.asarray(_layers.channel_shuffle(jnp.asarray(x), g))
    np.testing.assert_array_equal(out, ref.transpose(0, 2, 3, 1))


def test_conv_pads_symmetrically_like_pytorch_at_stride_2():
    # An impulse at position 2, a ones kernel of size 3, stride 2: PyTorch's padding=1 sees
    # it only in the window centred on 2; Flax "SAME" would pad (0, 1) and see it twice.
    layer = _layers.conv(
        1, 1, 3, stride=2, ndim=1, kernel_init=nnx.initializers.ones, rngs=nnx.Rngs(0)
    )
    x = jnp.zeros((1, 8, 1)).at[0, 2, 0].set(1.0)
    np.testing.assert_array_equal(np.asarray(layer(x))[0, :, 0], [0.0, 1.0, 0.0, 0.0])


def test_batch_norm_uses_pytorch_momentum_and_eval_switch():
    bn = _layers.batch_norm(3, rngs=nnx.Rngs(0))
    x = jnp.arange(12.0).reshape(4, 3) + 10.0
    bn(x)  # training mode: running mean moves 10% of the way to the batch mean
    np.testing.assert_allclose(bn.mean.get_value(), 0.1 * np.asarray(x).mean(0), rtol=1e-6)
    bn.eval()
    before = np.asarray(bn.mean.get_value())
    y = bn(x)
    np.testing.assert_array_equal(bn.mean.get_value(), before)
    var = np.asarray(bn.var.get_value())
    expected = (np.asarray(x) - before) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5)


def test_torch_bias_init_is_uniform_within_bound():
    fan_in = 25
    values = np.asarray(_layers.torch_bias_init(fan_in)(jax.random.key(0), (4000,)))
    bound = 1 / math.sqrt(fan_in)
    assert values.min() >= -bound and values.max() <= bound
    assert values.min() < -0.9 * bound and values.max() > 0.9 * bound


@pytest.mark.parametrize(
    ("init", "shape", "std"),
    [
        # kaiming_normal_(mode="fan_out") on a 3x3 conv 64 -> 128: fan_out = 9 * 128.
        (_layers.KAIMING_FAN_OUT, (3, 3, 64, 128), math.sqrt(2 / (9 * 128))),
        # PyTorch default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) has std 1/sqrt(3 fan_in).
        (_layers.TORCH_DEFAULT, (512, 256), 1 / math.sqrt(3 * 512)),
        (_layers.TORCH_DEFAULT, (3, 3, 16, 64), 1 / math.sqrt(3 * 9 * 16)),
    ],
)
def test_weight_inits_have_pytorch_scale(init, shape, std):
    values = np.asarray(init(jax.random.key(0), shape, jnp.float32))
    assert values.std() == pytest.approx(std, rel=0.03)


def test_check_images_names_the_shape():
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\].*\(2, 3, 32, 32\)"):
        _layers.check_images(jnp.zeros((2, 3, 32, 32)), 3, "Net")

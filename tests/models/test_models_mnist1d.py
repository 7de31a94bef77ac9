"""MNIST-1D models against plain numpy versions of the paper's definitions."""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from jaxkd.models import ConvNet1D, count_params, create_model, forward_with_features


def _x(shape=(4, 40)):
    return np.asarray(jax.random.normal(jax.random.key(3), shape))


def _dense(layer, h):
    return h @ np.asarray(layer.kernel.get_value()) + np.asarray(layer.bias.get_value())


def test_paper_mlp_matches_numpy_and_counts_15210():
    model = create_model("mnist1d_mlp", num_classes=10, rngs=nnx.Rngs(0))
    assert count_params(model) == (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)
    x = _x()
    relu = lambda v: np.maximum(v, 0)
    h1 = relu(_dense(model.layers[0], x))
    h2 = h1 + relu(_dense(model.layers[1], h1))  # the paper's MLPBase skip
    logits, feats = forward_with_features(model, x)
    np.testing.assert_allclose(feats["stage1"], h1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats["pooled"], h2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, _dense(model.head, h2), rtol=1e-5, atol=1e-5)


def test_mlp_without_residual_and_with_unequal_widths():
    x = _x()
    for kwargs in ({"hidden": (16, 16), "residual": False}, {"hidden": (16, 8)}):
        model = create_model("mnist1d_mlp", num_classes=3, rngs=nnx.Rngs(0), **kwargs)
        h1 = np.maximum(_dense(model.layers[0], x), 0)
        h2 = np.maximum(_dense(model.layers[1], h1), 0)
        _, feats = forward_with_features(model, x)
        np.testing.assert_allclose(feats["pooled"], h2, rtol=1e-5, atol=1e-5)


def _conv1d_numpy(x, kernel, bias, stride, pad):
    """x [B, L, Cin], kernel [K, Cin, Cout]: PyTorch Conv1d with zero padding `pad`."""
    k = kernel.shape[0]
    xp = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
    out_len = (x.shape[1] + 2 * pad - k) // stride + 1
    windows = np.stack([xp[:, i * stride : i * stride + k] for i in range(out_len)], axis=1)
    return np.einsum("blkc,kcd->bld", windows, kernel) + bias


def test_paper_cnn_matches_numpy_and_counts_5210():
    model = create_model("mnist1d_cnn", num_classes=10, rngs=nnx.Rngs(0))
    assert count_params(model) == (5 * 25 + 25) + 2 * (3 * 25 * 25 + 25) + (125 * 10 + 10)
    x = _x()
    logits, feats = forward_with_features(model, x)
    h = x[..., None]
    for i, (layer, length) in enumerate(zip(model.convs, (19, 10, 5), strict=True)):
        kernel, bias = np.asarray(layer.kernel.get_value()), np.asarray(layer.bias.get_value())
        h = np.maximum(_conv1d_numpy(h, kernel, bias, stride=2, pad=1), 0)
        assert h.shape == (4, length, 25)
        np.testing.assert_allclose(feats[f"stage{i + 1}"], h, rtol=1e-4, atol=1e-5)
    flat = h.reshape(4, -1)
    np.testing.assert_allclose(feats["pooled"], flat, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, _dense(model.head, flat), rtol=1e-4, atol=1e-4)


def test_channel_last_input_is_accepted():
    model = create_model("mnist1d_cnn_small", num_classes=10, rngs=nnx.Rngs(0))
    x = _x()
    np.testing.assert_allclose(model(x), model(x[..., None]), rtol=1e-6)


@pytest.mark.parametrize("name", ["mnist1d_mlp", "mnist1d_cnn"])
@pytest.mark.parametrize("shape", [(4, 41), (4, 40, 2), (40,)])
def test_bad_input_shape_raises_with_shape(name, shape):
    model = create_model(name, num_classes=10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[batch, 40\].*" + re.escape(str(shape))):
        model(np.zeros(shape, np.float32))


def test_bad_cnn_config_raises():
    with pytest.raises(ValueError, match="kernel_sizes"):
        ConvNet1D(channels=(8, 8), kernel_sizes=(3,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="too short"):
        ConvNet1D(length=2, rngs=nnx.Rngs(0))

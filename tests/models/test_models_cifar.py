"""CIFAR/ImageNet models: feature names and shapes (traced, not compiled), and compiled
forward passes at batch 2 for a few representative models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxkd.models import create_model, forward_with_features


def _feature_shapes(name, input_shape, **kwargs):
    """Logits and feature shapes of `name` on a batch of 2, from tracing only."""
    model = nnx.eval_shape(lambda: create_model(name, num_classes=10, rngs=nnx.Rngs(0), **kwargs))
    graphdef, state = nnx.split(model)

    def run(state, x):
        return forward_with_features(nnx.merge(graphdef, state), x)

    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    logits, feats = jax.eval_shape(run, state, x)
    assert set(feats) == set(model.feature_names)
    return logits, {k: v.shape[1:] for k, v in feats.items()}


def _stages(*shapes):
    out = {}
    for i, shape in enumerate(shapes):
        out[f"stage{i + 1}"] = out[f"stage{i + 1}_preact"] = shape
    return out


CIFAR = (32, 32, 3)
EXPECTED = {
    "resnet8x4": (
        CIFAR,
        {"stem": (32, 32, 32), "pooled": (256,)}
        | _stages((32, 32, 64), (16, 16, 128), (8, 8, 256)),
    ),
    "wrn_16_2": (
        CIFAR,
        {"stem": (32, 32, 16), "pooled": (128,)} | _stages((32, 32, 32), (16, 16, 64), (8, 8, 128)),
    ),
    "vgg13": (
        CIFAR,
        {"stem": (32, 32, 64), "pooled": (512,)}
        | _stages((16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512)),
    ),
    "mobilenetv2": (
        CIFAR,
        {"stem": (16, 16, 16), "pooled": (1280,)}
        | _stages((16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 160)),
    ),
    "shufflenetv1": (
        CIFAR,
        {"stem": (32, 32, 24), "pooled": (960,)} | _stages((16, 16, 240), (8, 8, 480), (4, 4, 960)),
    ),
    "shufflenetv2": (
        CIFAR,
        {"stem": (32, 32, 24), "pooled": (1024,)}
        | _stages((16, 16, 116), (8, 8, 232), (4, 4, 464)),
    ),
    "resnet18": (
        (224, 224, 3),
        {"stem": (56, 56, 64), "pooled": (512,)}
        | _stages((56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)),
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_feature_names_and_shapes(name):
    input_shape, expected = EXPECTED[name]
    logits, shapes = _feature_shapes(name, input_shape)
    assert logits.shape == (2, 10)
    assert shapes == expected


def test_vgg_pools_after_block3_only_at_64px():
    _, at64 = _feature_shapes("vgg8", (64, 64, 3))
    assert at64["stage3"] == (8, 8, 512) and at64["stage4"] == (4, 4, 512)


def test_cifar_stem_resnet50_shapes():
    _, shapes = _feature_shapes("resnet50_cifar", CIFAR, dtype=jnp.bfloat16)
    assert shapes["stem"] == (32, 32, 64) and shapes["stage4"] == (4, 4, 2048)


def test_bf16_compute_keeps_float32_params():
    logits, _ = _feature_shapes("resnet8", CIFAR, dtype=jnp.bfloat16)
    assert logits.dtype == jnp.bfloat16
    model = nnx.eval_shape(
        lambda: create_model("resnet8", num_classes=10, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    )
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        jnp.dtype(jnp.float32)
    }


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "shufflenetv2", "resnet18"])
def test_nchw_input_is_rejected_with_its_shape(name):
    model = nnx.eval_shape(lambda: create_model(name, num_classes=10, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"NHWC.*\(2, 3, 32, 32\)"):
        model(jnp.zeros((2, 3, 32, 32)))


@nnx.jit
def _forward(model, x):
    return forward_with_features(model, x)


def test_resnet8_batchnorm_follows_train_and_eval():
    model = create_model("resnet8", num_classes=10, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, *CIFAR))
    x_other = x.at[1].set(-x[1])  # same example 0, different batch-mate

    def stats():
        return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]

    initial = stats()
    logits, feats = _forward(model, x)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    assert feats["stage3"].shape == (2, 8, 8, 64)
    trained = stats()
    assert any(not np.allclose(a, b) for a, b in zip(initial, trained, strict=True))
    # Training mode normalises with batch statistics: example 0 depends on its batch-mate.
    train_other, _ = _forward(model, x_other)
    assert not np.allclose(train_other[0], logits[0], atol=1e-5)

    model.eval()
    frozen = stats()
    eval_logits, _ = _forward(model, x)
    eval_other, _ = _forward(model, x_other)
    assert all(np.array_equal(a, b) for a, b in zip(frozen, stats(), strict=True))
    np.testing.assert_allclose(eval_other[0], eval_logits[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(eval_logits, logits, atol=1e-5)


def test_wrn_dropout_follows_train_and_eval():
    model = create_model("wrn_16_1", num_classes=10, rngs=nnx.Rngs(0), dropout_rate=0.3)
    dropouts = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Dropout)]
    assert len(dropouts) == 6 and not any(d.deterministic for d in dropouts)
    model.eval()
    assert all(d.deterministic for d in dropouts)

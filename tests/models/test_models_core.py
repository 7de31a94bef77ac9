"""Feature recording: nnx.capture, forward_with_features, count_params."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxkd.models import FeatureModel, count_params, create_model, forward_with_features


@pytest.fixture
def mlp():
    return create_model("mnist1d_mlp_small", num_classes=10, rngs=nnx.Rngs(0))


def _x(batch=3):
    return jax.random.normal(jax.random.key(1), (batch, 40))


def test_plain_call_records_nothing_and_warns_nothing(mlp):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logits = mlp(_x())
    assert logits.shape == (3, 10)
    assert not jax.tree.leaves(nnx.state(mlp, nnx.Intermediate))


def test_forward_with_features_returns_each_named_feature_once(mlp):
    x = _x()
    expected = mlp(x)
    for _ in range(2):  # repeated calls do not accumulate
        logits, feats = forward_with_features(mlp, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-6)
    assert mlp.feature_names == ("stage1", "stage2", "pooled")
    assert set(feats) == set(mlp.feature_names)
    assert all(v.shape == (3, 32) for v in feats.values())
    np.testing.assert_array_equal(feats["pooled"], feats["stage2"])
    assert not jax.tree.leaves(nnx.state(mlp, nnx.Intermediate))


def test_nnx_capture_gives_the_same_features(mlp):
    x = _x()
    _, intermediates = nnx.capture(mlp, nnx.Intermediate)(x)
    _, feats = forward_with_features(mlp, x)
    assert set(intermediates) == set(feats)
    for name, value in feats.items():
        (captured,) = intermediates[name].get_value()
        np.testing.assert_array_equal(captured, value)


def test_forward_with_features_under_jit_with_split_state(mlp):
    graphdef, state = nnx.split(mlp)

    @jax.jit
    def step(state, x):
        model = nnx.merge(graphdef, state)
        logits, feats = forward_with_features(model, x)
        return logits, feats["pooled"]

    logits, pooled = step(state, _x())
    ref_logits, ref_feats = forward_with_features(mlp, _x())
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled, ref_feats["pooled"], rtol=1e-5, atol=1e-6)


def test_features_recorded_by_a_submodule_are_rejected():
    class Child(nnx.Module):
        def __call__(self, x):
            self.sow(nnx.Intermediate, "inner", x)
            return x

    class Parent(FeatureModel):
        def __init__(self):
            self.child = Child()

        def __call__(self, x):
            return self.child(x)

    with pytest.raises(ValueError, match="'child'"):
        forward_with_features(Parent(), jnp.ones((1, 2)))


def test_count_params_same_for_concrete_and_abstract(mlp):
    abstract = nnx.eval_shape(
        lambda: create_model("mnist1d_mlp_small", num_classes=10, rngs=nnx.Rngs(0))
    )
    assert count_params(mlp) == count_params(abstract) == 40 * 32 + 32 + 32 * 32 + 32 + 330

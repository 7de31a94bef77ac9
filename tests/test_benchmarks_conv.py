"""benchmarks/conv.py: its other convolution forms equal XLA's, and it runs end to end."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _benchmarks import load_benchmark

forms = load_benchmark("_conv_forms")


@pytest.mark.parametrize("name", sorted(forms.FORWARD_FORMS))
@pytest.mark.parametrize("size", [8, 7])  # 7: tiles that overhang the edge
def test_forms_equal_xla_convolution(name, size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, size, size + 2, 5)).astype(np.float32)
    w = rng.standard_normal((3, 3, 5, 3)).astype(np.float32)
    want = np.asarray(forms.xla_conv(x, w))
    got = np.asarray(jax.jit(forms.FORWARD_FORMS[name])(x, w))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_winograd_is_not_the_identity_of_a_wrong_kernel():
    # A flipped kernel must give a different result: the test above would catch a form
    # that ignored the kernel orientation only if the inputs are asymmetric.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 8, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 2, 2)).astype(np.float32)
    flipped = np.asarray(forms.winograd(x, w[::-1, ::-1], 2))
    assert not np.allclose(flipped, np.asarray(forms.xla_conv(x, w)), atol=1e-3)


def test_conv_benchmark_runs_and_reports_every_cell(tmp_path, capsys):
    conv = load_benchmark("conv")
    argv = ["--shapes", "4x2,2x4", "--batch", "2", "--iters", "1", "--warmup", "0"]
    results = conv.main([*argv, "--rounds", "1", "--no-torch", "--json", str(tmp_path / "r.json")])
    assert set(results) == {"jax:jaxkd", "jax:xla"}
    cases = {"fwd", "fwd+bwd"}
    assert set(results["jax:xla"]) == {f"{s}/{c}" for s in ("4x2", "2x4") for c in cases}
    cases |= set(forms.FORWARD_FORMS)
    assert set(results["jax:jaxkd"]) == {f"{s}/{c}" for s in ("4x2", "2x4") for c in cases}
    assert all(v > 0 for r in results.values() for v in r.values())
    table = capsys.readouterr().out
    assert "| XLA, jaxkd's settings: winograd F(4,3) |" in table
    assert (tmp_path / "r.json").exists()


def test_conv_benchmark_rejects_bad_shapes():
    conv = load_benchmark("conv")
    with pytest.raises(SystemExit):
        conv.parse_args(["--shapes", "32by64"])

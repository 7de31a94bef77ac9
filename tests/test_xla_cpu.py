"""jaxkd.xla_cpu: the flags it adds to XLA_FLAGS, and what XLA:CPU compiles with them."""

import json
import subprocess
import sys

import pytest

from jaxkd import xla_cpu

FLAGS = [
    f"{xla_cpu.YNN_FUSION_FLAG}={xla_cpu.YNN_FUSION_KINDS}",
    f"{xla_cpu.SCHEDULER_FLAG}=false",
]


def test_adds_the_flag_to_an_empty_environment():
    env = {}
    assert xla_cpu.configure_cpu(env) == " ".join(FLAGS)
    assert env["XLA_FLAGS"].split() == FLAGS


def test_keeps_other_flags_and_is_idempotent():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    xla_cpu.configure_cpu(env)
    xla_cpu.configure_cpu(env)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *FLAGS]


def test_never_overrides_the_users_setting():
    env = {"XLA_FLAGS": f"{xla_cpu.YNN_FUSION_FLAG}="}
    assert xla_cpu.configure_cpu(env).split() == [f"{xla_cpu.YNN_FUSION_FLAG}=", FLAGS[1]]


def test_can_be_turned_off():
    env = {"JAXKD_XLA_CPU": "0", "XLA_FLAGS": "--a=1"}
    assert xla_cpu.configure_cpu(env) == "--a=1"
    assert env["XLA_FLAGS"] == "--a=1"


def test_older_jaxlib_gets_no_flags(monkeypatch):
    monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 9))
    env = {}
    assert xla_cpu.configure_cpu(env) == ""
    assert "XLA_FLAGS" not in env


_PROBE = r"""
import json, os, re, sys
from jaxkd import xla_cpu
os.environ.pop("XLA_FLAGS", None)
if sys.argv[1] == "on":
    xla_cpu.configure_cpu()
import jax, jax.numpy as jnp, numpy as np

def f(x, w):
    dims = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
    return y.sum(), (y * y).mean((0, 1, 2))

rng = np.random.default_rng(0)
x = rng.normal(size=(8, 16, 16, 32)).astype(np.float32)
w = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
step = jax.jit(jax.value_and_grad(lambda x, w: f(x, w)[0] + f(x, w)[1].sum(), argnums=1))
text = step.lower(x, w).compile().as_text()
parts = re.split(r"\n(?=%|ENTRY)", text)
ynn = set(re.findall(r"ynn_fusion[.\d]* = .*?calls=(%[\w.\-]+)", text))
value, grad = step(x, w)
print(json.dumps({
    "convs": text.count(" convolution("),
    "convs_in_ynn": sum(p.count(" convolution(") for p in parts if p.split(" ")[0] in ynn),
    "ynn_fusions": len(ynn),
    "value": float(value),
    "grad": np.asarray(grad).ravel()[:64].tolist(),
}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not xla_cpu.cpu_flags(), reason="this jaxlib predates the flag")
def test_convolutions_leave_ynnpack_reductions_stay_and_results_agree():
    on, off = _probe("on"), _probe("off")
    assert on["convs"] >= 3 and on["convs_in_ynn"] == 0
    assert on["ynn_fusions"] >= 1  # the reductions are still YNNPACK's
    assert off["convs_in_ynn"] >= 1  # XLA's default, which the flag changes
    assert on["value"] == pytest.approx(off["value"], rel=1e-5)
    assert on["grad"] == pytest.approx(off["grad"], rel=1e-4, abs=1e-3)

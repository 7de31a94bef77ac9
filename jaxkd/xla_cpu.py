"""XLA:CPU settings for distillation steps: XLA's own convolutions, a memory-first schedule.

Since jaxlib 0.10, XLA:CPU hands convolutions, dots and reductions to YNNPACK. For the
3×3 convolutions of CIFAR ResNets that is slower than XLA's Eigen convolutions, most of all
in the backward pass (resnet8x4's 64-channel 32×32 layer, batch 64: forward 27 → 19 ms,
input and weight gradients 81 → 43 ms); YNNPACK's reductions, on the other hand, are faster
than XLA's (batch-norm statistics). `configure_cpu` therefore keeps YNNPACK for dots and
reductions and gives convolutions back to XLA.

XLA:CPU's default scheduler orders a step for concurrency, which keeps the teacher's
activations alive next to the student's: a resnet32x4 → resnet8x4 step needs 350 MiB of
temporaries against 266 MiB for the student's step alone. The memory-minimising scheduler
frees them before the student's peak, as PyTorch does: 145 against 145 MiB.

`benchmarks/step.py` measures both (docs/benchmarks.md). The `jaxkd` command, the
experiment scripts and the benchmarks call `configure_cpu`; library users may call it
first thing in their own scripts.

XLA reads `XLA_FLAGS` once, when JAX creates its CPU client (the first computation, not
`import jax`), so this must run before that; later it has no effect. It never overrides a
setting already in `XLA_FLAGS`, and `JAXKD_XLA_CPU=0` turns it off.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# XLA's default minus `individual_convolution`: dots and reductions stay on YNNPACK.
YNN_FUSION_KINDS = "individual_dot,reduce"
SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
# The first jaxlib whose XLA knows the flag; an unknown flag in XLA_FLAGS aborts XLA.
MIN_JAXLIB = (0, 10)


def _jaxlib_version() -> tuple[int, ...]:
    import jaxlib.version

    return tuple(int(p) for p in jaxlib.version.__version__.split(".")[:2] if p.isdigit())


def cpu_flags() -> tuple[str, ...]:
    """The XLA flags `configure_cpu` adds (empty when this jaxlib predates them)."""
    if _jaxlib_version() < MIN_JAXLIB:
        return ()
    return (f"{YNN_FUSION_FLAG}={YNN_FUSION_KINDS}", f"{SCHEDULER_FLAG}=false")


def configure_cpu(environ: MutableMapping[str, str] | None = None) -> str:
    """Appends jaxkd's XLA:CPU flags to `XLA_FLAGS`, keeping every flag already there.

    A flag whose name is already in `XLA_FLAGS` is left as the user set it. Nothing is
    changed when `JAXKD_XLA_CPU` is "0". Only the CPU backend reads these flags, so this is
    harmless on GPU and TPU hosts.

    Args:
      environ: the environment to change; None is `os.environ`.

    Returns:
      The resulting `XLA_FLAGS` value.
    """
    env = os.environ if environ is None else environ
    current = env.get("XLA_FLAGS", "")
    if env.get("JAXKD_XLA_CPU", "1") == "0":
        return current
    names = {flag.split("=", 1)[0] for flag in current.split()}
    added = [flag for flag in cpu_flags() if flag.split("=", 1)[0] not in names]
    if added:
        env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return env.get("XLA_FLAGS", "")

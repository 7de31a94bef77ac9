"""One 3×3 convolution layer of a CIFAR ResNet: XLA:CPU against PyTorch, and other forms.

    python benchmarks/conv.py                          # every CIFAR ResNet layer shape, batch 64
    python benchmarks/conv.py --shapes 32x64,8x256 --rounds 5
    python benchmarks/conv.py --no-forms --no-torch    # XLA's convolutions only

For each layer shape (H = W spatial size × C channels in and out, stride 1, SAME padding) it
times the forward pass and the forward plus both gradients (input and kernel) of:

- XLA's convolution with jaxkd's XLA:CPU settings (`jaxkd.xla_cpu.configure_cpu`: XLA's own
  convolution kernels) and with XLA's defaults (YNNPACK's convolutions), each in its own
  process because XLA reads its flags once;
- the same convolution written as Winograd F(2×2, 3×3) and F(4×4, 3×3), as im2col (one
  matrix product) and as nine shifted matrix products (forward only, jaxkd's settings);
- PyTorch's `nn.Conv2d` (oneDNN) in NCHW and in channels-last (NHWC) memory format.

Every column runs in a fresh subprocess; the subprocesses are repeated for `--rounds` rounds
in alternating order and the table gives, per cell, the median over rounds of each round's
median time per call. Throughput is 2·N·H·W·9·C² flops per forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SHAPES = "32x16,16x32,8x64,32x64,16x128,8x256"
WORKERS = ("jax:jaxkd", "jax:xla", "torch:nchw", "torch:nhwc")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="HxC,HxC,... (H = W)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating subprocess rounds")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (cores)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    parser.add_argument("--no-forms", action="store_true", help="skip the other conv forms")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.shape_list = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    except ValueError:
        parser.error(f"--shapes must look like 32x64,8x256, got {args.shapes!r}")
    if any(len(s) != 2 or min(s) < 1 for s in args.shape_list):
        parser.error(f"--shapes must look like 32x64,8x256, got {args.shapes!r}")
    return args


def _median_ms(call, *operands, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        call(*operands)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call(*operands)
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def _run_compiled(compiled, operands) -> None:
    import jax

    jax.block_until_ready(compiled(*operands))


def _torch_forward(conv, x, cot) -> None:
    import torch

    with torch.no_grad():
        conv(x)


def _torch_forward_backward(conv, x, cot) -> None:
    x.grad = conv.weight.grad = None
    conv(x).backward(cot)


def jax_worker(args: argparse.Namespace, settings: str) -> dict[str, float]:
    """Times XLA's convolution (and, with jaxkd's settings, the other forms) per shape."""
    if settings == "jaxkd":
        from jaxkd import xla_cpu

        xla_cpu.configure_cpu()
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, HERE)
    import _conv_forms

    def fwd_bwd(f):
        def loss(x, w, cot):
            return jnp.vdot(f(x, w), cot)

        return jax.grad(loss, argnums=(0, 1))

    out = {}
    rng = np.random.default_rng(0)
    for h, c in args.shape_list:
        x = jnp.asarray(rng.standard_normal((args.batch, h, h, c)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, c, c)) / np.sqrt(9 * c), jnp.float32)
        cot = jnp.asarray(rng.standard_normal((args.batch, h, h, c)), jnp.float32)
        cases = {
            "fwd": (_conv_forms.xla_conv, (x, w)),
            "fwd+bwd": (fwd_bwd(_conv_forms.xla_conv), (x, w, cot)),
        }
        if settings == "jaxkd" and not args.no_forms:
            cases |= {name: (f, (x, w)) for name, f in _conv_forms.FORWARD_FORMS.items()}
        for name, (f, operands) in cases.items():
            compiled = jax.jit(f).lower(*operands).compile()
            out[f"{h}x{c}/{name}"] = _median_ms(
                _run_compiled, compiled, operands, iters=args.iters, warmup=args.warmup
            )
    return out


def torch_worker(args: argparse.Namespace, layout: str) -> dict[str, float]:
    """Times PyTorch's `nn.Conv2d` forward and forward + backward per shape."""
    import torch

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    out = {}
    torch.manual_seed(0)
    for h, c in args.shape_list:
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=fmt)
        x = torch.randn(args.batch, c, h, h).to(memory_format=fmt).requires_grad_()
        cot = torch.randn(args.batch, c, h, h).to(memory_format=fmt)
        for name, call in (("fwd", _torch_forward), ("fwd+bwd", _torch_forward_backward)):
            out[f"{h}x{c}/{name}"] = _median_ms(
                call, conv, x, cot, iters=args.iters, warmup=args.warmup
            )
    return out


def _run_worker(argv: list[str], worker: str) -> dict[str, float]:
    """Runs one worker in a fresh process and returns its {shape/case: ms}."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", worker]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {worker} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def collect(args: argparse.Namespace, argv: list[str]) -> dict[str, dict[str, float]]:
    """{worker: {shape/case: median over rounds of ms}} over alternating rounds."""
    workers = [
        w for w in WORKERS if not (w.startswith("torch") and (args.no_torch or not _has_torch()))
    ]
    rounds: dict[str, list[dict[str, float]]] = {w: [] for w in workers}
    for r in range(args.rounds):
        for worker in workers if r % 2 == 0 else workers[::-1]:
            rounds[worker].append(_run_worker(argv, worker))
    return {
        w: {k: sorted(x[k] for x in rs)[len(rs) // 2] for k in rs[0]} for w, rs in rounds.items()
    }


def format_table(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> str:
    """The markdown table: a row per implementation and pass, a column per layer shape."""
    titles = {
        "jax:jaxkd": "XLA, jaxkd's settings",
        "jax:xla": "XLA's defaults (YNNPACK)",
        "torch:nchw": "PyTorch, NCHW",
        "torch:nhwc": "PyTorch, NHWC",
    }
    rows = [(w, case) for w in ("jax:jaxkd", "jax:xla") for case in ("fwd", "fwd+bwd")]
    if not args.no_forms:
        from _conv_forms import FORWARD_FORMS

        rows += [("jax:jaxkd", name) for name in FORWARD_FORMS]
    torch_workers = [w for w in ("torch:nchw", "torch:nhwc") if w in results]
    rows += [(w, case) for w in torch_workers for case in ("fwd", "fwd+bwd")]
    keys = [f"{h}x{c}" for h, c in args.shape_list]
    head = ["ms per call", *(f"{args.batch}×{h}×{h}×{c}" for h, c in args.shape_list)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    gflop = [2 * args.batch * h * h * 9 * c * c / 1e9 for h, c in args.shape_list]
    lines.append("| GFLOP per forward | " + " | ".join(f"{g:.2f}" for g in gflop) + " |")
    for w, case in rows:
        cells = [f"{results[w][f'{k}/{case}']:.1f}" for k in keys]
        lines.append(f"| {titles[w]}: {case} | " + " | ".join(cells) + " |")
    if torch_workers:
        for case in ("fwd", "fwd+bwd"):
            ratios = [
                results["jax:jaxkd"][f"{k}/{case}"]
                / min(results[w][f"{k}/{case}"] for w in torch_workers)
                for k in keys
            ]
            cells = " | ".join(f"**{r:.2f}**" for r in ratios)
            lines.append(f"| jaxkd's XLA / faster PyTorch layout, {case} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the workers, prints the table, optionally writes JSON, returns the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is not None:
        kind, variant = args.worker.split(":")
        result = (jax_worker if kind == "jax" else torch_worker)(args, variant)
        print(json.dumps(result))
        return result
    sys.path.insert(0, HERE)
    from _measure import load_average

    before = load_average()
    results = collect(args, argv)
    print(
        f"batch {args.batch}, ms per call (median of {args.rounds} rounds × {args.iters} calls), "
        f"cores {len(os.sched_getaffinity(0))}, load average {before} -> {load_average()}"
    )
    print(format_table(args, results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

"""Peak memory and time of `forward_kl` on LLM-sized logits: chunked vs unchunked vs naive.

    python benchmarks/token_losses.py                        # 4096 tokens, V = 151,936, bf16
    python benchmarks/token_losses.py --dtype f32 --chunks 128,256,512,1024
    python benchmarks/token_losses.py --tokens 1024 --vocab 32000 --max-run-gib 4

For every method and mode (the loss value alone, and value-and-grad w.r.t. the student logits)
it prints XLA's compiled memory analysis (argument, output and temporary bytes; the peak
estimate is their sum minus aliased bytes), the measured growth of the process RSS during one
call, and the time per call. Peaks are given relative to the size of the two logit arrays.
Each configuration runs in a fresh subprocess so that RSS peaks do not mix; the RSS column is
the one to trust where XLA allocates outside its buffer assignment (XLA:CPU's library fusions
do). Configurations whose estimated peak exceeds `--max-run-gib` are compiled and analysed
but not executed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

GIB = 2**30


def _naive_forward_kl(student_logits, teacher_logits):
    """The textbook version: probabilities, then their logs, all [B, L, V] at once in f32."""
    import jax
    import jax.numpy as jnp

    p_t = jax.nn.softmax(teacher_logits.astype(jnp.float32), axis=-1)
    p_s = jax.nn.softmax(student_logits.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.sum(p_t * (jnp.log(p_t) - jnp.log(p_s)), axis=-1))


def _rss_bytes() -> int | None:
    """Current resident set size (Linux), or None where /proc is unavailable."""
    return _status_bytes("VmRSS")


def _peak_rss_bytes() -> int | None:
    """Resident-set high-water mark since the last `_reset_peak_rss` (Linux)."""
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Resets the kernel's RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Returns freed heap memory to the OS (glibc), so RSS growth counts the call's memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _make_logits(shape: tuple[int, ...], dtype, seed: int):
    """Random logits made a slab of rows at a time, so that making them needs little memory."""
    import jax
    import jax.numpy as jnp

    slab = max(1, min(shape[1], 2**24 // shape[2]))

    @jax.jit
    def make_slab(index):
        key = jax.random.fold_in(jax.random.key(seed), index)
        return (3.0 * jax.random.normal(key, (shape[0], slab, shape[2]))).astype(dtype)

    slabs = [make_slab(i) for i in range(-(-shape[1] // slab))]
    return jax.block_until_ready(jnp.concatenate(slabs, axis=1)[:, : shape[1]])


def _child(spec: dict) -> dict:
    """Measures one configuration; runs inside its own process."""
    import jax
    import jax.numpy as jnp

    from jaxkd.losses import forward_kl

    dtype = {"bf16": jnp.bfloat16, "f32": jnp.float32}[spec["dtype"]]
    shape = (spec["batch"], spec["length"], spec["vocab"])
    if spec["method"] == "naive":
        loss = _naive_forward_kl
    else:
        chunk = None if spec["method"] == "unchunked" else int(spec["method"].split("=")[1])

        def loss(s, t):
            return forward_kl(s, t, chunk_size=chunk)

    fn = jax.jit(jax.value_and_grad(loss) if spec["mode"] == "value_and_grad" else loss)
    arg = jax.ShapeDtypeStruct(shape, dtype)
    compiled = fn.lower(arg, arg).compile()
    stats = compiled.memory_analysis()
    result = {
        **spec,
        "arg": stats.argument_size_in_bytes,
        "out": stats.output_size_in_bytes,
        "temp": stats.temp_size_in_bytes,
        "alias": stats.alias_size_in_bytes,
    }
    estimate = result["arg"] + result["out"] + result["temp"] - result["alias"]
    if estimate > spec["max_run_gib"] * GIB:
        return result

    s, t = _make_logits(shape, dtype, seed=0), _make_logits(shape, dtype, seed=1)
    # Freed input-making buffers are released asynchronously; let that finish, hand the
    # memory back to the OS, and only then start counting.
    time.sleep(1.0)
    _release_free_memory()
    before = _rss_bytes()
    can_measure = _reset_peak_rss()
    start = time.perf_counter()
    jax.block_until_ready(compiled(s, t))
    times = [time.perf_counter() - start]
    peak = _peak_rss_bytes()
    if can_measure and before is not None and peak is not None:
        result["rss_growth"] = peak - before
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        jax.block_until_ready(compiled(s, t))
        times.append(time.perf_counter() - start)
    result["time_s"] = min(times)
    return result


def _fmt_gib(x: float | None) -> str:
    return "n/a" if x is None else f"{x / GIB:.2f}"


def _table(rows: list[dict], logits_bytes: int) -> str:
    header = (
        "| method | mode | args GiB | out GiB | temp GiB | peak est. GiB | peak / logits "
        "| RSS growth GiB | (args + RSS growth) / logits | time s |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        estimate = r["arg"] + r["out"] + r["temp"] - r["alias"]
        growth = r.get("rss_growth")
        measured = "n/a" if growth is None else f"{(r['arg'] + growth) / logits_bytes:.2f}×"
        time_s = r.get("time_s")
        lines.append(
            f"| {r['method']} | {r['mode']} | {_fmt_gib(r['arg'])} | {_fmt_gib(r['out'])} | "
            f"{_fmt_gib(r['temp'])} | {_fmt_gib(estimate)} | {estimate / logits_bytes:.2f}× | "
            f"{_fmt_gib(growth)} | {measured} | "
            f"{'not run' if time_s is None else f'{time_s:.2f}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="B·L tokens")
    parser.add_argument("--length", type=int, default=1024, help="sequence length L")
    parser.add_argument("--vocab", type=int, default=151_936, help="vocabulary size V")
    parser.add_argument("--dtype", choices=("bf16", "f32"), default="bf16")
    parser.add_argument("--chunks", default="256,1024", help="chunk sizes in tokens")
    parser.add_argument("--modes", default="value,value_and_grad")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive reference")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls after the first")
    parser.add_argument(
        "--max-run-gib",
        type=float,
        default=8.0,
        help="only analyse (do not run) configs whose estimated peak exceeds this",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    length = args.length if args.tokens % args.length == 0 else args.tokens
    batch = args.tokens // length
    itemsize = 2 if args.dtype == "bf16" else 4
    logits_bytes = 2 * args.tokens * args.vocab * itemsize
    methods = ([] if args.no_naive else ["naive"]) + ["unchunked"]
    methods += [f"chunk={int(c)}" for c in args.chunks.split(",") if c]
    rows = []
    for mode in args.modes.split(","):
        for method in methods:
            spec = {
                "method": method,
                "mode": mode,
                "batch": batch,
                "length": length,
                "vocab": args.vocab,
                "dtype": args.dtype,
                "repeats": args.repeats,
                "max_run_gib": args.max_run_gib,
            }
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                print(f"{method} {mode} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"done: {method} {mode}", file=sys.stderr, flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"forward_kl, B·L = {args.tokens} tokens ([{batch}, {length}, {args.vocab}]), "
        f"{args.dtype}; two logit arrays = {_fmt_gib(logits_bytes)} GiB; value_and_grad is "
        f"w.r.t. the student logits; {os.cpu_count()} CPUs, 1-minute load {load:.1f} at the end."
    )
    print(_table(rows, logits_bytes))


if __name__ == "__main__":
    main()

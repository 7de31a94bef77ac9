"""A tiny deterministic training run with checkpoints, driven by tests/test_resume.py.

A two-layer MLP with dropout (so the RNG in the state matters), Adam, and a Grain
`MapDataset` shuffled by seed over in-memory numpy data. Checkpoint step = number of
completed updates. Run as::

    python tests/resume_script.py WORKDIR --steps 12 [--kill-at 9] [--step-sleep 0.05]
        [--distributed] [--reference REFDIR]

`--kill-at K` SIGKILLs the process right after step K's save was started (so that save
may be left half written); `--reference REFDIR` afterwards trains the same run from
scratch, uninterrupted, in REFDIR. Each run writes its final params to `final.npz`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from typing import Any, NamedTuple

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxkd.checkpoint import Checkpointer

SEED = 0
BATCH = 8


class TrainState(NamedTuple):
    step: jax.Array
    params: dict[str, jax.Array]
    opt_state: Any
    rng: jax.Array


# Prefetch threads would only burn CPU on this tiny dataset.
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def make_dataset() -> grain.MapDataset:
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 3))).argmax(-1).astype(np.int32)
    examples = grain.MapDataset.range(len(x)).shuffle(seed=SEED).repeat()
    return examples.map(lambda i: {"x": x[i], "y": y[i]}).batch(BATCH)


optimizer = optax.adam(1e-2)


def init_state() -> TrainState:
    k1, k2, rng = jax.random.split(jax.random.key(SEED), 3)
    params = {
        "w1": jax.random.normal(k1, (4, 16)) * 0.5,
        "b1": jnp.zeros(16),
        "w2": jax.random.normal(k2, (16, 3)) * 0.5,
        "b2": jnp.zeros(3),
    }
    return TrainState(jnp.array(0, jnp.int32), params, optimizer.init(params), rng)


def loss_fn(params: dict[str, jax.Array], batch: dict[str, jax.Array], key: jax.Array):
    hidden = jax.nn.relu(batch["x"] @ params["w1"] + params["b1"])
    keep = jax.random.bernoulli(key, 0.8, hidden.shape)
    hidden = jnp.where(keep, hidden / 0.8, 0.0)
    logits = hidden @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


@jax.jit
def train_step(state: TrainState, batch: dict[str, jax.Array]) -> TrainState:
    rng, key = jax.random.split(state.rng)
    grads = jax.grad(loss_fn)(state.params, batch, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state, rng)


def train(workdir: str, steps: int, *, kill_at: int | None = None, step_sleep: float = 0.0):
    """Trains to `steps`, resuming from `workdir` if it holds a checkpoint."""
    ckpt = Checkpointer(workdir, config={"seed": SEED, "steps": steps}, save_interval_steps=3)
    ckpt.install_preemption_handler()
    iterator = iter(make_dataset().to_iter_dataset(READ_OPTIONS))
    state = init_state()
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state, data_iterator=iterator)
        print(f"resumed {int(state.step)}", flush=True)
    for step in range(int(state.step), steps):
        state = train_step(state, next(iterator))
        ckpt.save(step + 1, state, data_iterator=iterator)
        print(f"step {step + 1}", flush=True)
        if kill_at == step + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if ckpt.should_stop():
            print(f"preempted {step + 1}", flush=True)
            break
        time.sleep(step_sleep)
    ckpt.close()
    np.savez(os.path.join(workdir, "final.npz"), **jax.device_get(state.params))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--reference")
    args = parser.parse_args(argv)
    if args.distributed:
        # A one-process cluster is enough to turn on JAX's preemption service.
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        jax.distributed.initialize(f"localhost:{port}", num_processes=1, process_id=0)
    train(args.workdir, args.steps, kill_at=args.kill_at, step_sleep=args.step_sleep)
    if args.reference:
        train(args.reference, args.steps)
    if args.distributed:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])

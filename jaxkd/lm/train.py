"""The LM outer loop: `jax.lax.scan` over chunks of steps, evaluation in bits per byte.

The step is the engine's pure `(state, teacher, batch) -> (state, metrics)`. Running
`steps_per_call` of them inside one compiled `lax.scan` over stacked batches removes the
per-step dispatch that dominates small models on CPU; the state is donated, so the chunk
still holds one copy of the params and optimizer state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import grain
import jax
import numpy as np

from jaxkd.engine import TrainState, accumulate
from jaxkd.engine.step import TrainStep
from jaxkd.lm.distill import bits_per_byte

Batch = Mapping[str, Any]


class TrainResult(NamedTuple):
    """What `train_lm` returns.

    Attributes:
      state: the final `TrainState`.
      history: `(step, metrics)` of the last step of each chunk, metrics as floats.
      tokens_per_second: target tokens (`loss_mask` 1) per second of training after the
        first (compiling) chunk; NaN when there was only one chunk.
      seconds: wall time of the whole loop.
    """

    state: TrainState
    history: list[tuple[int, dict[str, float]]]
    tokens_per_second: float
    seconds: float


def scan_steps(train_step: TrainStep, *, donate: bool = True) -> Callable[..., Any]:
    """`jit` of `n` train steps run by `lax.scan` over batches stacked on a leading axis.

    Args:
      train_step: the engine's pure step.
      donate: donate the state buffers.

    Returns:
      `run(state, teacher, batches) -> (state, metrics)`, metrics stacked `[n]`.

    References:
      JAX `lax.scan`; big_vision (several steps per host call).
    """

    def run(state, teacher, batches):
        return jax.lax.scan(lambda s, b: train_step(s, teacher, b), state, batches)

    return jax.jit(run, donate_argnums=(0,) if donate else ())


def _stack(batches: list[Batch]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(b[k]) for b in batches]) for k in batches[0]}


def train_lm(
    train_step: TrainStep,
    state: TrainState,
    teacher: Any,
    batches: Iterable[Batch],
    *,
    num_steps: int,
    steps_per_call: int = 10,
    prepare: Callable[[Batch], Batch] | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Runs `num_steps` train steps, `steps_per_call` per compiled call.

    Args:
      train_step: the engine's pure step (not yet jit-compiled).
      state: the initial `TrainState` (donated).
      teacher: the teacher argument of the step (`TeacherState` online, else None).
      batches: host batches (dicts of arrays); at least `num_steps` of them. A
        `grain.MapDataset` is read ahead by two background threads.
      num_steps: steps to run; a multiple of `steps_per_call`, else the last chunk is
        shorter (and compiles once more).
      steps_per_call: steps per `lax.scan` chunk.
      prepare: optional host function applied to each batch (e.g. to drop keys).
      log: called with `(step, metrics)` after each chunk.

    Returns:
      A `TrainResult`.

    References:
      flax `examples/lm1b/train.py` (the outer loop).
    """
    if num_steps < 1 or steps_per_call < 1:
        raise ValueError(
            f"`num_steps` and `steps_per_call` must be positive, got {num_steps} and "
            f"{steps_per_call}."
        )
    run = scan_steps(train_step)
    if isinstance(batches, grain.MapDataset):
        # Batches (e.g. decoded from the top-k cache) are prepared by background threads
        # while the compiled steps run, in the same order.
        options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * steps_per_call)
        batches = batches.to_iter_dataset(options)
    iterator: Iterator[Batch] = iter(batches)
    history: list[tuple[int, dict[str, float]]] = []
    start = time.perf_counter()
    timed_tokens, timed_start = 0.0, None
    done = 0
    while done < num_steps:
        n = min(steps_per_call, num_steps - done)
        chunk = []
        for _ in range(n):
            try:
                batch = next(iterator)
            except StopIteration:
                raise ValueError(f"`batches` ran out after {done + len(chunk)} steps.") from None
            chunk.append(batch if prepare is None else prepare(batch))
        stacked = _stack(chunk)
        state, metrics = run(state, teacher, stacked)
        metrics = {k: float(v[-1]) for k, v in jax.device_get(metrics).items()}
        done += n
        history.append((done, metrics))
        if timed_start is None:
            timed_start = time.perf_counter()  # after the first chunk: compilation excluded
        else:
            timed_tokens += float(stacked["loss_mask"].sum())
        if log is not None:
            log(done, metrics)
    end = time.perf_counter()
    rate = timed_tokens / (end - timed_start) if timed_tokens else float("nan")
    return TrainResult(state, history, rate, end - start)


def evaluate_lm(
    eval_step: Callable[..., dict[str, jax.Array]],
    params: Any,
    model_state: Any,
    batches: Iterable[Batch],
    *,
    num_bytes: int,
) -> dict[str, float]:
    """Held-out bits per byte and tokens/s of one pass over `batches`.

    Args:
      eval_step: `jax.jit(make_lm_eval_step(model))`.
      params: the model's params.
      model_state: its other variables.
      batches: the eval batches (`jaxkd.text.lm_eval_batches`; padding has loss_mask 0).
      num_bytes: UTF-8 bytes of the split (`PackedText.num_bytes`).

    Returns:
      {"bits_per_byte", "nll_per_token", "tokens", "tokens_per_second"}; the rate counts
      batches after the first (which compiles).

    References:
      Gao et al. 2020, "The Pile" (bits per byte).
    """
    total, timed_tokens, timed_start = None, 0.0, None
    for batch in batches:
        batch = {k: batch[k] for k in ("inputs", "targets", "loss_mask")}
        sums = eval_step(params, model_state, batch)
        total = accumulate(total, sums)
        if timed_start is None:
            jax.block_until_ready(total)
            timed_start = time.perf_counter()
        else:
            timed_tokens += float(np.asarray(batch["loss_mask"]).size)
    if total is None:
        raise ValueError("`batches` is empty.")
    total = {k: float(v) for k, v in jax.device_get(total).items()}
    elapsed = time.perf_counter() - timed_start
    return {
        "bits_per_byte": bits_per_byte(total["nll"], num_bytes),
        "nll_per_token": total["nll"] / max(total["tokens"], 1.0),
        "tokens": total["tokens"],
        "tokens_per_second": timed_tokens / elapsed if timed_tokens else float("nan"),
    }

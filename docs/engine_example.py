"""Use the jaxkd engine in your own training loop (the README example; run by the tests).

A teacher MLP is trained on a synthetic 40-feature, 10-class problem, then a 4x smaller
student learns from it with soft targets, a FitNets hint through a trainable adapter and
the hard labels, on a device mesh, with the teacher held in bfloat16. Run it with
`python docs/engine_example.py`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxkd import engine, losses, parallel
from jaxkd.adapters import HintAdapter
from jaxkd.models import MLP
from jaxkd.objective import Objective, Term


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(42).normal(size=(10, 40))
    label = rng.integers(0, 10, n)
    inputs = centers[label] + 1.5 * rng.normal(size=(n, 40))
    return {"inputs": inputs.astype(np.float32), "label": label.astype(np.int32)}


def batches(data, batch_size, seed):
    """Shuffled full batches with an all-ones `mask` (training drops the remainder)."""
    order = np.random.default_rng(seed).permutation(len(data["label"]))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        rows = order[start : start + batch_size]
        yield {**{k: v[rows] for k, v in data.items()}, "mask": np.ones(batch_size, np.float32)}


def eval_batches(data, batch_size):
    """Every example once; the last batch is padded and masked, not dropped."""
    n = len(data["label"])
    for start in range(0, n, batch_size):
        rows = np.arange(start, start + batch_size)
        valid = rows < n
        yield {
            **{k: v[np.minimum(rows, n - 1)] for k, v in data.items()},
            "mask": valid.astype(np.float32),
        }


def fit(model, objective, teacher_config, teacher, data, mesh, steps, batch_size=64):
    optimizer = optax.adam(3e-3)
    state = engine.init_train_state(model, optimizer, objective=objective, rng=0)
    train_step = engine.make_train_step(model, objective, optimizer, teacher=teacher_config)
    # One compiled function: teacher forward, student forward/backward, all losses, update.
    step = parallel.jit_sharded_train_step(train_step, mesh, state, teacher)
    state = parallel.shard_tree(state, mesh)
    teacher = None if teacher is None else parallel.shard_tree(teacher, mesh)
    done, epoch = 0, 0
    while done < steps:
        for batch in batches(data, batch_size, seed=epoch):
            state, metrics = step(state, teacher, parallel.shard_batch(batch, mesh))
            done += 1
            if done == steps:
                break
        epoch += 1
    return state, jax.device_get(metrics)


def evaluate(model, state, teacher_config, teacher, data, mesh):
    eval_step = jax.jit(engine.make_eval_step(model, teacher=teacher_config))
    total = None
    for batch in eval_batches(data, batch_size=64):
        total = engine.accumulate(
            total, eval_step(state, teacher, parallel.shard_batch(batch, mesh))
        )
    return engine.summarize(total)


def main(steps: int = 150) -> dict[str, float]:
    train, test = make_data(2048, seed=0), make_data(500, seed=1)
    mesh = parallel.make_mesh()  # all devices on the data axis

    # 1. The teacher: plain supervised training is the same step with no teacher.
    teacher_model = engine.from_nnx(MLP(hidden=(64, 64), rngs=nnx.Rngs(0)))
    teacher_state, _ = fit(teacher_model, Objective(), None, None, train, mesh, steps)
    teacher = engine.freeze_teacher(teacher_state, dtype=jnp.bfloat16)

    # 2. The student learns from it: soft targets + a hint on the pooled features + labels.
    student = engine.from_nnx(MLP(hidden=(16, 16), rngs=nnx.Rngs(1)))
    adapter = HintAdapter((16,), (64,), use_bn=False, use_relu=False, rngs=nnx.Rngs(2))
    objective = Objective(
        terms=[
            Term("kd", losses.kd, hparams={"temperature": 4.0}, weight=0.9),
            Term(
                "hint",
                losses.hint,
                student="pooled",
                teacher="pooled",
                adapter=engine.adapter_from_nnx(adapter),
                weight=optax.linear_schedule(0.0, 1.0, steps // 2),  # warm-up
            ),
        ],
        task_weight=0.1,
    )
    config = engine.TeacherConfig(apply=teacher_model.apply, dtype=jnp.bfloat16)
    state, metrics = fit(student, objective, config, teacher, train, mesh, steps)
    print("last step:", {k: round(float(v), 4) for k, v in metrics.items()})
    results = evaluate(student, state, config, teacher, test, mesh)
    print("test:", {k: round(v, 4) for k, v in results.items()})
    return results


if __name__ == "__main__":
    main()

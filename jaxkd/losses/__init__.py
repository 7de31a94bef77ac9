"""Distillation objectives as pure JAX functions (depends only on jax, optax and chex).

Every function follows one convention: `loss(student, teacher, ..., *, mask=None,
<hyperparameters>) -> scalar`, student first, float32 results for half-precision inputs,
and trace-time errors that name the argument and the shapes.
"""

# Each loss module re-exports its public names here, one block per module.

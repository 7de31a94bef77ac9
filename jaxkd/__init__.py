"""jaxkd: knowledge distillation for JAX and Flax."""

__version__ = "0.1.0"

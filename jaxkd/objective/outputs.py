"""What a model returns to the objective: logits plus named features."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax

# A source names what feeds a loss: "logits", a feature name, or a function of the outputs.
Source = str | Callable[["Outputs"], jax.Array]


@flax.struct.dataclass
class Outputs:
    """Outputs of one forward pass.

    Attributes:
      logits: `[batch, ..., num_classes]` logits.
      features: named intermediate features, e.g. `{"stage3": [B, H, W, C], "pooled": [B, D]}`,
        as recorded by the model with Flax's `sow` (see `jaxkd.engine.from_nnx`).
    """

    logits: jax.Array
    features: Mapping[str, jax.Array] = flax.struct.field(default_factory=dict)


def select(outputs: Outputs, source: Source, role: str, term: str) -> jax.Array:
    """Returns the array `source` names in `outputs` ("logits", a feature name or a function).

    Raises a `ValueError` naming the term, the side and the available features when the
    feature does not exist, so a typo in a config fails at trace time with the fix in view.
    """
    if callable(source):
        return source(outputs)
    if source == "logits":
        return outputs.logits
    if source not in outputs.features:
        raise ValueError(
            f"term {term!r}: the {role} has no feature {source!r}; available features: "
            f"{sorted(outputs.features)} (plus 'logits')."
        )
    return outputs.features[source]


def pick_teacher(teacher_out: Any, name: str | None, term: str) -> Outputs:
    """The outputs of teacher `name` from one `Outputs` or a `{name: Outputs}` mapping."""
    if teacher_out is None:
        raise ValueError(
            f"term {term!r} reads the teacher, but no teacher outputs were given (offline mode "
            "needs the teacher's logits in the batch)."
        )
    if isinstance(teacher_out, Outputs):
        if name is not None:
            raise ValueError(
                f"term {term!r} asks for teacher {name!r}, but there is a single teacher; "
                "pass teacher outputs as a {name: Outputs} mapping to name teachers."
            )
        return teacher_out
    if not isinstance(teacher_out, Mapping):
        raise TypeError(
            f"teacher outputs must be Outputs or a mapping of them, got {type(teacher_out)}."
        )
    if name is None:
        if len(teacher_out) != 1:
            raise ValueError(
                f"term {term!r} names no teacher, but there are {len(teacher_out)}: "
                f"{sorted(teacher_out)}; set `teachers=` on the term."
            )
        return next(iter(teacher_out.values()))
    if name not in teacher_out:
        raise ValueError(
            f"term {term!r} asks for teacher {name!r}; available teachers: {sorted(teacher_out)}."
        )
    return teacher_out[name]

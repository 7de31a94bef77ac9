"""A declarative distillation objective: the task loss plus a list of weighted terms."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxkd.objective.outputs import Outputs, pick_teacher, select
from jaxkd.objective.terms import Scheduled, Term, cross_entropy, resolve
from jaxkd.objective.weighting import ExampleWeight, ensemble_logits, weighted_mean

TASK = "task"


class ObjectiveAux(NamedTuple):
    """What `Objective.apply` returns besides the loss.

    Attributes:
      metrics: `loss` (the total), `loss/<term>` (each term unweighted) and `weight/<term>`.
      loss_state: new state of the stateful terms, `{term: state}`.
      adapter_state: new non-trainable adapter state, `{term: {"student"|"teacher": state}}`.
    """

    metrics: dict[str, jax.Array]
    loss_state: dict[str, Any]
    adapter_state: dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """`L = w_task(step) · CE(student, labels) + Σ_k w_k(step) · loss_k(...)`.

    A pure function of the model outputs, the batch and the step; every term is reported
    separately. Adding a method is a new `Term` (a loss from `jaxkd.losses` plus what feeds
    it), not a new trainer.

    Example::

        objective = Objective(
            terms=[
                Term("kd", losses.kd, hparams={"temperature": 4.0}, weight=0.9),
                Term("hint", losses.hint, student="stage2", teacher="stage2", weight=100.0,
                     adapter=adapter_from_nnx(HintAdapter(...))),
            ],
            task_weight=0.1,
        )
        loss, metrics = objective(student_out, teacher_out, batch, step)

    Attributes:
      terms: the distillation terms.
      task_weight: weight (or schedule) of the hard-label cross-entropy on `batch[label_key]`
        with `batch["mask"]`; None for no task loss.
      label_key: batch key of the int labels.
      example_weight: per-example weights applied to every term, task loss included
        (multiplied with a term's own `example_weight`).

    References:
      Hinton et al. 2015 (soft targets + hard labels); Tunix distillation strategies (terms
      that name their inputs).
    """

    terms: Sequence[Term] = ()
    task_weight: Scheduled | None = 1.0
    label_key: str = "label"
    example_weight: ExampleWeight | None = None

    def __post_init__(self):
        terms = tuple(self.terms)
        for term in terms:
            if not isinstance(term, Term):
                raise TypeError(f"`terms` must hold Term objects, got {type(term).__name__}.")
        names = [t.name for t in terms] + ([TASK] if self.task_weight is not None else [])
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"term names must be unique, got duplicates {duplicates}.")
        object.__setattr__(self, "terms", terms)

    @property
    def all_terms(self) -> tuple[Term, ...]:
        """The task term (if any) followed by the distillation terms."""
        if self.task_weight is None:
            return self.terms
        task = Term(
            TASK, cross_entropy, teacher=None, inputs=(self.label_key,), weight=self.task_weight
        )
        return (task, *self.terms)

    @property
    def needs_teacher(self) -> bool:
        """Whether any term reads the teacher's outputs."""
        return any(t.teacher is not None for t in self.terms)

    def init_adapter_params(self) -> dict[str, dict[str, Any]]:
        """Initial adapter parameters, `{term: {"student"|"teacher": params}}`."""
        return self._adapter_field("params")

    def init_adapter_state(self) -> dict[str, dict[str, Any]]:
        """Initial non-trainable adapter state, same layout as `init_adapter_params`."""
        return self._adapter_field("state")

    def init_loss_state(self) -> dict[str, Any]:
        """Initial state of the stateful terms, `{term: state}`."""
        return {t.name: t.state for t in self.terms if t.stateful}

    def _adapter_field(self, field: str) -> dict[str, dict[str, Any]]:
        out = {}
        for term in self.terms:
            sides = {"student": term.adapter, "teacher": term.teacher_adapter}
            sides = {side: getattr(a, field) for side, a in sides.items() if a is not None}
            if sides:
                out[term.name] = sides
        return out

    def __call__(
        self,
        student_out: Outputs,
        teacher_out: Outputs | Mapping[str, Outputs] | None,
        batch: Mapping[str, jax.Array],
        step: jax.typing.ArrayLike,
        *,
        adapter_params: Mapping[str, Any] | None = None,
        adapter_state: Mapping[str, Any] | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`(loss, metrics)` for objectives without stateful terms (adapters in eval mode).

        Args:
          student_out: the student's `Outputs`.
          teacher_out: the teacher's `Outputs`, `{name: Outputs}` for several teachers, or None.
          batch: the batch dict.
          step: the training step (drives the schedules).
          adapter_params: adapter parameters; defaults to the adapters' initial ones.
          adapter_state: adapter state; defaults to the initial one.

        Returns:
          `(loss, metrics)`.
        """
        stateful = [t.name for t in self.terms if t.stateful]
        if stateful:
            raise ValueError(
                f"terms {stateful} carry a loss state; call `Objective.apply`, which takes and "
                "returns it."
            )
        loss, aux = self.apply(
            student_out,
            teacher_out,
            batch,
            step,
            adapter_params=adapter_params,
            adapter_state=adapter_state,
            train=False,
        )
        return loss, aux.metrics

    def apply(
        self,
        student_out: Outputs,
        teacher_out: Outputs | Mapping[str, Outputs] | None,
        batch: Mapping[str, jax.Array],
        step: jax.typing.ArrayLike,
        *,
        adapter_params: Mapping[str, Any] | None = None,
        adapter_state: Mapping[str, Any] | None = None,
        loss_state: Mapping[str, Any] | None = None,
        rng: jax.Array | None = None,
        train: bool = True,
    ) -> tuple[jax.Array, ObjectiveAux]:
        """The total loss and `ObjectiveAux` (metrics, new loss state, new adapter state).

        Shaped for `jax.value_and_grad(..., has_aux=True)` over `adapter_params` (and the
        student parameters that produced `student_out`). The teacher's arrays are wrapped in
        `stop_gradient`, so nothing flows into the teacher even if the caller forgot.

        Args:
          student_out, teacher_out, batch, step: as in `__call__`.
          adapter_params: `{term: {side: params}}`; defaults to the initial ones.
          adapter_state: `{term: {side: state}}`; defaults to the initial one.
          loss_state: `{term: state}` of stateful terms; defaults to the initial one.
          rng: PRNG key for stateful terms (CRD's negatives), folded with the term index.
          train: adapters in training mode (BatchNorm batch statistics).

        Returns:
          `(loss, ObjectiveAux)`.
        """
        params = self.init_adapter_params() if adapter_params is None else adapter_params
        states = self.init_adapter_state() if adapter_state is None else adapter_state
        loss_state = self.init_loss_state() if loss_state is None else loss_state
        if not isinstance(batch, Mapping):
            raise TypeError(f"`batch` must be a dict of arrays, got {type(batch).__name__}.")
        total = jnp.zeros((), jnp.float32)
        metrics, new_loss_state, new_adapter_state = {}, {}, {}
        for index, term in enumerate(self.all_terms):
            key = None if rng is None else jax.random.fold_in(rng, index)
            value, term_state, term_adapter_state = self._term(
                term, student_out, teacher_out, batch, step, params, states, loss_state, key, train
            )
            weight = jnp.asarray(resolve(term.weight, step), jnp.float32)
            total = total + weight * value
            metrics[f"loss/{term.name}"] = value
            metrics[f"weight/{term.name}"] = weight
            if term.stateful:
                new_loss_state[term.name] = term_state
            if term_adapter_state:
                new_adapter_state[term.name] = term_adapter_state
        metrics["loss"] = total
        return total, ObjectiveAux(metrics, new_loss_state, new_adapter_state)

    def _term(
        self, term, student_out, teacher_out, batch, step, params, states, loss_state, key, train
    ):
        hparams = term.hyperparameters(step)
        new_adapter_state = {}

        def adapt(side: str, adapter, x):
            if term.name not in params or side not in params[term.name]:
                raise ValueError(
                    f"term {term.name!r} has a {side} adapter but `adapter_params` has no "
                    f"entry [{term.name!r}][{side!r}]; build them with "
                    "`objective.init_adapter_params()`."
                )
            state = states.get(term.name, {}).get(side, {})
            y, new_adapter_state[side] = adapter.apply(
                params[term.name][side], state, x, train=train
            )
            return y

        student = select(student_out, term.student, "student", term.name)
        if term.adapter is not None:
            student = adapt("student", term.adapter, student)
        args = [student]
        if term.teacher is not None:
            args.append(self._teacher_array(term, teacher_out, hparams))
            if term.teacher_adapter is not None:
                args[-1] = adapt("teacher", term.teacher_adapter, args[-1])
        for name in term.inputs:
            if name not in batch:
                raise ValueError(
                    f"term {term.name!r} needs batch[{name!r}]; batch keys: {sorted(batch)}."
                )
            args.append(batch[name])
        kwargs = dict(hparams)
        mask = batch.get(term.mask_key) if term.mask_key is not None else None
        if mask is not None:
            kwargs["mask"] = mask
        weights = self._example_weights(term, student_out, teacher_out, batch)
        if weights is not None:
            kwargs["reduction"] = "none"
        if term.stateful:
            if term.name not in loss_state:
                raise ValueError(f"`loss_state` has no entry for stateful term {term.name!r}.")
            args += [loss_state[term.name], key]
            value, new_state = term.loss(*args, **kwargs)
        else:
            value, new_state = term.loss(*args, **kwargs), None
        if weights is not None:
            value = weighted_mean(value, weights, mask, term.name)
        value = jnp.asarray(value)
        if value.ndim != 0:
            raise ValueError(
                f"term {term.name!r}: the loss returned shape {tuple(value.shape)}, expected a "
                "scalar."
            )
        return value.astype(jnp.float32), new_state, new_adapter_state

    @staticmethod
    def _teacher_array(term: Term, teacher_out, hparams) -> jax.Array:
        if isinstance(term.teachers, Mapping):
            names = list(term.teachers)
            logits = [pick_teacher(teacher_out, n, term.name).logits for n in names]
            weights = [term.teachers[n] for n in names]
            array = ensemble_logits(logits, weights, term.temperature(hparams))
        else:
            array = select(
                pick_teacher(teacher_out, term.teachers, term.name),
                term.teacher,
                "teacher",
                term.name,
            )
        return jax.lax.stop_gradient(array)

    def _example_weights(self, term, student_out, teacher_out, batch):
        fns = [f for f in (self.example_weight, term.example_weight) if f is not None]
        if not fns:
            return None
        weights = fns[0](student_out, teacher_out, batch)
        for fn in fns[1:]:
            weights = weights * fn(student_out, teacher_out, batch)
        return weights

"""Declarative distillation objectives: which outputs feed which loss, with what weight.

An `Objective` is the hard-label task loss plus a list of `Term`s, each naming a loss from
`jaxkd.losses`, the student and teacher outputs or features that feed it (optionally
through a trainable `Adapter`), extra batch inputs, and a weight that may follow an optax
schedule. It is a pure function `(student_out, teacher_out, batch, step) -> (loss, metrics)`.
"""

from jaxkd.objective.objective import Objective as Objective
from jaxkd.objective.objective import ObjectiveAux as ObjectiveAux
from jaxkd.objective.outputs import Outputs as Outputs
from jaxkd.objective.terms import Adapter as Adapter
from jaxkd.objective.terms import Scheduled as Scheduled
from jaxkd.objective.terms import Term as Term
from jaxkd.objective.terms import cross_entropy as cross_entropy
from jaxkd.objective.terms import resolve as resolve
from jaxkd.objective.weighting import ExampleWeight as ExampleWeight
from jaxkd.objective.weighting import ensemble_logits as ensemble_logits
from jaxkd.objective.weighting import source_weights as source_weights
from jaxkd.objective.weighting import teacher_confidence as teacher_confidence
from jaxkd.objective.weighting import weighted_mean as weighted_mean

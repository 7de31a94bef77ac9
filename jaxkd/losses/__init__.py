"""Distillation objectives as pure JAX functions (depends only on jax, optax and chex).

Every function follows one convention: `loss(student, teacher, ..., *, mask=None,
<hyperparameters>) -> scalar`, student first, float32 results for half-precision inputs,
and trace-time errors that name the argument and the shapes.
"""

# Each loss module re-exports its public names here, one block per module.

from jaxkd.losses.crd import CRDState as CRDState
from jaxkd.losses.crd import crd as crd
from jaxkd.losses.crd import crd_contrast_indices as crd_contrast_indices
from jaxkd.losses.crd import crd_init as crd_init
from jaxkd.losses.feature_statistics import fsp as fsp
from jaxkd.losses.feature_statistics import nst as nst
from jaxkd.losses.features import attention_transfer as attention_transfer
from jaxkd.losses.features import cosine_embedding as cosine_embedding
from jaxkd.losses.features import hint as hint
from jaxkd.losses.features import similarity_preserving as similarity_preserving
from jaxkd.losses.features import vid as vid
from jaxkd.losses.logit_relations import dist as dist
from jaxkd.losses.logits import dkd as dkd
from jaxkd.losses.logits import kd as kd
from jaxkd.losses.logits import kd_with_labels as kd_with_labels
from jaxkd.losses.logits import logit_standardized_kd as logit_standardized_kd
from jaxkd.losses.logits import pseudo_label as pseudo_label
from jaxkd.losses.relations import attention_relation as attention_relation
from jaxkd.losses.relations import correlation_congruence as correlation_congruence
from jaxkd.losses.relations import pkt as pkt
from jaxkd.losses.relations import rkd_angle as rkd_angle
from jaxkd.losses.relations import rkd_distance as rkd_distance
from jaxkd.losses.sparse import sparse_forward_kl as sparse_forward_kl
from jaxkd.losses.tokens import forward_kl as forward_kl
from jaxkd.losses.tokens import generalized_jsd as generalized_jsd
from jaxkd.losses.tokens import reverse_kl as reverse_kl
from jaxkd.losses.tokens import skew_forward_kl as skew_forward_kl
from jaxkd.losses.tokens import skew_reverse_kl as skew_reverse_kl
from jaxkd.losses.tokens import total_variation as total_variation

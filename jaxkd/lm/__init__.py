"""LLM distillation: token-level (online and from a top-k cache), sequence-level, on-policy.

Every mode runs through the engine's one compiled step (see docs/lm_distill.md):

- `make_lm_train_step(student, optimizer, loss="forward_kl", teacher_apply=...)`: online
  token-level KD; `loss="sparse_forward_kl"` trains from `TopKCache` batches instead;
- `write_topk_cache` / `TopKCache`: the teacher's top-k per token in array_record shards;
- `write_completions` / `CompletionSource`: teacher samples for sequence-level KD;
- `make_gkd_step`: on-policy GKD with λ and β;
- `train_lm` / `evaluate_lm`: the outer loop (`lax.scan` over steps) and bits per byte.
"""

from jaxkd.lm.cache import TopKCache as TopKCache
from jaxkd.lm.cache import cached_train_batches as cached_train_batches
from jaxkd.lm.cache import topk_fn as topk_fn
from jaxkd.lm.cache import write_topk_cache as write_topk_cache
from jaxkd.lm.distill import ONLINE_LOSSES as ONLINE_LOSSES
from jaxkd.lm.distill import bits_per_byte as bits_per_byte
from jaxkd.lm.distill import lm_objective as lm_objective
from jaxkd.lm.distill import make_lm_eval_step as make_lm_eval_step
from jaxkd.lm.distill import make_lm_train_step as make_lm_train_step
from jaxkd.lm.distill import teacher_config as teacher_config
from jaxkd.lm.models import build_lm as build_lm
from jaxkd.lm.models import count_params as count_params
from jaxkd.lm.models import lm_model as lm_model
from jaxkd.lm.models import load_lm as load_lm
from jaxkd.lm.models import save_lm as save_lm
from jaxkd.lm.on_policy import make_gkd_step as make_gkd_step
from jaxkd.lm.on_policy import prompt_batch as prompt_batch
from jaxkd.lm.sequence_level import CompletionSource as CompletionSource
from jaxkd.lm.sequence_level import completion_train_batches as completion_train_batches
from jaxkd.lm.sequence_level import write_completions as write_completions
from jaxkd.lm.topk_codec import TopKCodec as TopKCodec
from jaxkd.lm.train import TrainResult as TrainResult
from jaxkd.lm.train import evaluate_lm as evaluate_lm
from jaxkd.lm.train import scan_steps as scan_steps
from jaxkd.lm.train import train_lm as train_lm

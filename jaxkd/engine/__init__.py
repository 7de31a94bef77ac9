"""The distillation engine: train state, frozen teacher, and one compiled train/eval step.

student = engine.from_nnx(student_module)
state = engine.init_train_state(student, optimizer, objective=objective)
teacher = engine.freeze_teacher(engine.from_nnx(teacher_module), dtype=jnp.bfloat16)
step = engine.jit_train_step(engine.make_train_step(
    student, objective, optimizer,
    teacher=engine.TeacherConfig(apply=teacher_apply, dtype=jnp.bfloat16)))
state, metrics = step(state, teacher, batch)
"""

from jaxkd.engine.evaluate import accumulate as accumulate
from jaxkd.engine.evaluate import make_eval_step as make_eval_step
from jaxkd.engine.evaluate import summarize as summarize
from jaxkd.engine.models import ApplyFn as ApplyFn
from jaxkd.engine.models import Model as Model
from jaxkd.engine.models import adapter_from_nnx as adapter_from_nnx
from jaxkd.engine.models import apply_fn_of as apply_fn_of
from jaxkd.engine.models import from_linen as from_linen
from jaxkd.engine.models import from_nnx as from_nnx
from jaxkd.engine.state import TrainState as TrainState
from jaxkd.engine.state import init_train_state as init_train_state
from jaxkd.engine.step import jit_train_step as jit_train_step
from jaxkd.engine.step import make_train_step as make_train_step
from jaxkd.engine.step import pmean_floating as pmean_floating
from jaxkd.engine.teacher import TeacherConfig as TeacherConfig
from jaxkd.engine.teacher import TeacherState as TeacherState
from jaxkd.engine.teacher import born_again as born_again
from jaxkd.engine.teacher import cast_floating as cast_floating
from jaxkd.engine.teacher import freeze_teacher as freeze_teacher
from jaxkd.engine.teacher import teacher_outputs as teacher_outputs

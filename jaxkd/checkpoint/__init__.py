"""Orbax checkpoints for distillation runs: the student, the teacher and the data position.

A run's workdir holds ``checkpoints/<step>/{student,config,data}`` (one Orbax
`CheckpointManager`) and, once, ``teacher/``. `Checkpointer` is what the outer loop
uses to save, resume and handle preemption; `restore_student` and `restore_teacher`
read one side of a run back for evaluation, onto any mesh. See docs/checkpoints.md.
"""

from jaxkd.checkpoint._trees import params_hash as params_hash
from jaxkd.checkpoint.checkpointer import Checkpointer as Checkpointer
from jaxkd.checkpoint.restore import restore_config as restore_config
from jaxkd.checkpoint.restore import restore_student as restore_student
from jaxkd.checkpoint.teacher import restore_teacher as restore_teacher

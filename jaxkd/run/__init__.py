"""The outer loop of an experiment: train, evaluate, log, checkpoint, resume.

`train_and_evaluate(config, workdir)` runs an experiment config end to end;
`evaluate_checkpoint(workdir)` restores a run's student alone and evaluates it.
See docs/training.md.
"""

from jaxkd.run.evaluate import evaluate_checkpoint as evaluate_checkpoint
from jaxkd.run.monitor import read_events as read_events
from jaxkd.run.train import train_and_evaluate as train_and_evaluate

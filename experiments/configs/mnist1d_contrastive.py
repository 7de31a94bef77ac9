r"""MNIST-1D, contrastive distillation: crd, on the labelled split (its memory bank indexes
one split).

The argument is "<method>[,<data>][,<student>]", data "labels" or "transfer" (default):

  jaxkd train --config experiments/configs/mnist1d_contrastive.py:crd,labels \
      --workdir runs/mnist1d/mnist1d_mlp/crd_labels

The teacher is read from runs/mnist1d/teacher (experiments/configs/mnist1d_teacher.py);
docs/demo.md lists the recipes and their results.
"""

from jaxkd.experiment import mnist1d


def get_config(arg: str = "crd,labels"):
    """The contrastive-family recipe named by `arg`."""
    return mnist1d.parse_recipe(arg, family="contrastive")

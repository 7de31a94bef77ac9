"""Mixup of a host batch, with the mixed labels as soft targets.

Keys added to the batch (all [B], or [B, num_classes] for the soft targets):
  * "soft_label": λ·onehot(label) + (1 − λ)·onehot(label_mix), float32 — the target for
    `optax.softmax_cross_entropy`; rows of unlabelled examples (label −1) are zero there.
  * "label_mix": the partner's label (int32), for λ·CE(label) + (1 − λ)·CE(label_mix).
  * "mixup_lambda": λ of each example (float32; one λ is drawn per batch).
"label" keeps the unmixed label. "teacher_inputs", when present, is mixed with the same
partners and λ, so the teacher scores the very image the student sees (function matching).
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np


class Mixup(grain.transforms.RandomMap):
    """Grain batch transform mixing each example with a random partner of the same batch.

    x̃ = λ·x + (1 − λ)·x[π],  λ ~ Beta(α, α),  π a random permutation of the batch.

    Args:
      alpha: Beta concentration α > 0.
      num_classes: size of the one-hot soft targets.

    References: Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018;
    Beyer et al., "Knowledge distillation: A good teacher is patient and consistent",
    CVPR 2022 (mixup on the shared teacher/student view).
    """

    def __init__(self, alpha: float, num_classes: int):
        if not alpha > 0:
            raise ValueError(f"`alpha` must be > 0, got {alpha}.")
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
        self.alpha = float(alpha)
        self.num_classes = int(num_classes)

    def random_map(self, batch: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        label = np.asarray(batch["label"])
        size = label.shape[0]
        lam = np.float32(rng.beta(self.alpha, self.alpha))
        perm = rng.permutation(size)
        out = dict(batch)
        for key in ("inputs", "teacher_inputs"):
            if key in batch:
                x = batch[key]
                out[key] = (lam * x + (1 - lam) * x[perm]).astype(x.dtype)
        classes = np.arange(self.num_classes)
        onehot = (label[:, None] == classes).astype(np.float32)
        out["soft_label"] = lam * onehot + (1 - lam) * onehot[perm]
        out["label_mix"] = label[perm].astype(np.int32)
        out["mixup_lambda"] = np.full((size,), lam, np.float32)
        return out

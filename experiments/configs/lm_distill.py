r"""LM distillation on the Python standard library: a teacher and one student per mode.

  python experiments/lm_distill.py --config experiments/configs/lm_distill.py \
      --workdir runs/lm_distill
  python experiments/lm_distill.py --config experiments/configs/lm_distill.py:tiny \
      --workdir /tmp/lm_tiny            # the toy version the tests run

Byte-level tokens, windows of 128; teacher 0.77M params (4 layers, width 128), students
0.11M (2 layers, width 64), all trained with AdamW and a warmup-cosine schedule. Students
train 600 steps of 16 windows in every mode: once from random init, and once continuing
a shared 300-step cross-entropy warm start (`--config.student.warm_start_steps=0` runs
the cold starts only). See docs/lm_distill.md.
"""

from jaxkd.lm.configs import lm_distill_config


def get_config(arg: str = ""):
    """The README table's config; "tiny" for the seconds-long test version."""
    if arg not in ("", "tiny"):
        raise ValueError(f"config argument must be '' or 'tiny', got {arg!r}.")
    return lm_distill_config(tiny=arg == "tiny")

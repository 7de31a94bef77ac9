r"""Trains a teacher LM on the stdlib corpus, then a student per distillation mode.

  python experiments/lm_distill.py --workdir runs/lm_distill [--tiny] \
      [--config experiments/configs/lm_distill.py] [--config.student.warm_start_steps=0 ...]

Prints the markdown table (held-out bits per byte, params, tokens/s) and writes
`results.json` and `results.md` in the workdir. The teacher, its top-k cache, its
completions and the students' cross-entropy warm start are kept there and reused by a
second run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from jaxkd.cli_config import load_config
from jaxkd.lm.experiment import run_lm_distill

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "lm_distill.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (about a minute)")
    args, overrides = parser.parse_known_args(argv)
    spec = args.config + (":tiny" if args.tiny and ":" not in args.config else "")
    config = load_config(spec, overrides)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("jaxkd").setLevel(logging.INFO)
    results = run_lm_distill(config, args.workdir)
    print(results["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

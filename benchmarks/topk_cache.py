r"""Bytes per token and KL error of the teacher top-k cache code, per vocabulary and setting.

  python benchmarks/topk_cache.py                  # V = 259 and V = 151,936, k = 50
  python benchmarks/topk_cache.py --tokens 64      # quicker

Teacher distributions are simulated LM-like ones (Zipfian over a random id order, with a
random sharpness and a random boost of the top token), so the large vocabulary costs
seconds; the students are the teacher's logits plus Gaussian noise (σ = 1). For a real
teacher, `experiments/lm_distill.py` reports the same numbers in `results.json`. The
columns are those of `jaxkd.lm.cache_error.topk_cache_error`: KL(p̄ ‖ p̂) of the code
against the full distribution coarsened to top-k + tail, the change of the
`sparse_forward_kl(tail="bucket")` loss the code causes, and that loss against the full
forward KL (truncation to k included).
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxkd.lm.cache_error import topk_cache_error
from jaxkd.lm.topk_codec import TopKCodec

# (name, codec keyword arguments): the settings compared at each vocabulary size.
SETTINGS = (
    ("m=2, 4-bit", {"exact_top": 2, "value_bits": 4}),
    ("m=4, 4-bit", {"exact_top": 4, "value_bits": 4}),
    ("m=4, 5-bit", {"exact_top": 4, "value_bits": 5}),
    ("m=4, 6-bit", {"exact_top": 4, "value_bits": 6}),
)


def simulated_logits(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    """`[n, vocab]` LM-like logits: `−s · log(rank) + N(0, 1)` plus a top-token boost."""
    rng = np.random.default_rng(seed)
    log_rank = np.log(np.arange(1, vocab + 1))
    rows = []
    for _ in range(n):
        logits = -rng.uniform(0.9, 1.6) * log_rank + rng.normal(0.0, 1.0, vocab)
        logits[0] += rng.uniform(0.0, 6.0)
        rows.append(logits[rng.permutation(vocab)])
    return np.stack(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--vocabs", default="259,151936")
    args = parser.parse_args(argv)
    rows = []
    print("| V | k | setting | bytes/token | KL(p̄‖p̂) | Δloss (code) | Δloss vs full KL | tail |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for vocab in (int(v) for v in args.vocabs.split(",")):
        teacher = simulated_logits(args.tokens, vocab, seed=1)
        student = teacher + np.random.default_rng(2).normal(0.0, 1.0, teacher.shape)
        for name, kwargs in SETTINGS:
            report = topk_cache_error(teacher, student, TopKCodec(vocab, args.k, **kwargs))
            rows.append({"vocab": vocab, "k": args.k, "setting": name, **report})
            print(
                f"| {vocab:,} | {args.k} | {name} | {report['bytes_per_token']:.0f} | "
                f"{report['kl_compression']:.1e} | {report['loss_error_code']:.1e} | "
                f"{report['loss_error']:.1e} | {report['tail_mass']:.3f} |"
            )
    return rows


if __name__ == "__main__":
    main()

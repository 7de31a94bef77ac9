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
forward KL (truncation to k included); encode and decode speeds are single-threaded numpy
on 2,048 tokens at once.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jaxkd.lm.cache_error import topk_cache_error
from jaxkd.lm.topk_codec import TopKCodec

# (name, codec keyword arguments): the settings compared at each vocabulary size.
SETTINGS = (
    ("3-bit + refine (default)", {}),
    ("4-bit + refine", {"value_bits": 4}),
    ("6-bit + refine", {"value_bits": 6}),
    ("4-bit, no refine", {"value_bits": 4, "refine_bits": ()}),
)


def _tokens_per_second(codec: TopKCodec, teacher: np.ndarray) -> tuple[float, float]:
    """Encode and decode speed (tokens/s, best of 3) on 2,048 of the teacher's top-k."""
    shifted = teacher - teacher.max(1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    ids = np.argsort(-logprobs, axis=1)[:, : codec.k]
    logprobs = np.take_along_axis(logprobs, ids, 1)
    repeats = -(-2048 // len(ids))
    ids, logprobs = np.tile(ids, (repeats, 1)), np.tile(logprobs, (repeats, 1))
    codec.decode(codec.encode(logprobs[:1], ids[:1]))  # builds the rank tables once
    encode, decode = [], []
    for _ in range(3):
        start = time.perf_counter()
        codes = codec.encode(logprobs, ids)
        middle = time.perf_counter()
        codec.decode(codes)
        encode.append(middle - start)
        decode.append(time.perf_counter() - middle)
    return len(ids) / min(encode), len(ids) / min(decode)


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
    print(
        "| V | k | setting | bytes/token | KL(p̄‖p̂) | Δloss (code) | Δloss vs full KL | tail "
        "| encode tokens/s | decode tokens/s |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for vocab in (int(v) for v in args.vocabs.split(",")):
        teacher = simulated_logits(args.tokens, vocab, seed=1)
        student = teacher + np.random.default_rng(2).normal(0.0, 1.0, teacher.shape)
        for name, kwargs in SETTINGS:
            codec = TopKCodec(vocab, args.k, **kwargs)
            report = topk_cache_error(teacher, student, codec)
            encode, decode = _tokens_per_second(codec, teacher)
            rows.append(
                {"vocab": vocab, "k": args.k, "setting": name, **report}
                | {"encode_tokens_per_s": encode, "decode_tokens_per_s": decode}
            )
            print(
                f"| {vocab:,} | {args.k} | {name} | {report['bytes_per_token']:.0f} | "
                f"{report['kl_compression']:.1e} | {report['loss_error_code']:.1e} | "
                f"{report['loss_error']:.1e} | {report['tail_mass']:.3f} | "
                f"{encode:,.0f} | {decode:,.0f} |"
            )
    return rows


if __name__ == "__main__":
    main()

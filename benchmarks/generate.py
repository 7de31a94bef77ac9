r"""Generation throughput with and without the KV cache, and the sequence-level pipeline.

  python benchmarks/generate.py                      # 256 new tokens, the README's teacher
  python benchmarks/generate.py --teacher runs/lm_distill/teacher   # a trained teacher
  python benchmarks/generate.py --tiny               # seconds, for a smoke test

Prints a markdown table: generated tokens per second of `jaxkd.text.generate` with the KV
cache and recomputing the whole prefix at every step (same greedy tokens; the ratio is
the cache's speed-up), then the sequence-level pipeline end to end: sampling a
completion dataset to array_record (`write_completions`) and fine-tuning a student on it
(`CompletionSource` -> grain batches -> the engine's step), in tokens per second of each
stage. Compilation is excluded: each timed call follows a warm-up call of the same shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxkd.engine import init_train_state
from jaxkd.lm import (
    CompletionSource,
    build_lm,
    completion_train_batches,
    lm_model,
    load_lm,
    make_lm_train_step,
    train_lm,
    write_completions,
)
from jaxkd.lm.configs import lm_distill_config, transformer_config
from jaxkd.text import ByteTokenizer, generate, pack_texts


def _timed(fn, repeats: int) -> tuple[float, object]:
    out = jax.block_until_ready(fn())  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best, out


def _random_text(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["def", "return", "self", "value", "if", "else:", "for", "in", "import", "(", ")"]
    return [" ".join(rng.choice(words, 40)) + "\n" for _ in range(n)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="a saved LM (default: random init)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pipeline-prompts", type=int, default=256)
    parser.add_argument("--pipeline-steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.prompt_len, args.new_tokens = 2, 4, 12
        args.pipeline_prompts, args.pipeline_steps, args.repeats = 8, 2, 1
    config = lm_distill_config(tiny=args.tiny)
    tokenizer = ByteTokenizer()
    length = args.prompt_len + args.new_tokens
    if args.teacher:
        module, params, _ = load_lm(args.teacher)
        model_config = module.config
    else:
        model_config, params = transformer_config(config.teacher.model), None
    # RoPE has no position parameters: the same weights serve any max_seq_len.
    module = build_lm(dataclasses.replace(model_config, max_seq_len=max(length, 2 * 128)))
    params = lm_model(module).params if params is None else params
    rng = np.random.default_rng(0)
    prompts = jnp.asarray(rng.integers(0, 256, (args.batch, args.prompt_len)), jnp.int32)
    lengths = jnp.full((args.batch,), args.prompt_len, jnp.int32)
    results = {"batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
    tokens = {}
    for use_cache in (True, False):
        seconds, out = _timed(
            lambda use_cache=use_cache: generate(
                module,
                params,
                prompts,
                lengths,
                max_new_tokens=args.new_tokens,
                pad_id=tokenizer.pad_id,
                use_cache=use_cache,
                vocab_size=tokenizer.vocab_size,
            ),
            args.repeats,
        )
        name = "cached" if use_cache else "uncached"
        results[f"{name}_tokens_per_second"] = args.batch * args.new_tokens / seconds
        tokens[name] = np.asarray(out.tokens)
    results["speedup"] = results["cached_tokens_per_second"] / results["uncached_tokens_per_second"]
    results["same_greedy_tokens"] = bool(np.array_equal(tokens["cached"], tokens["uncached"]))

    # Sequence-level pipeline: teacher samples -> array_record -> student fine-tuning.
    seq_len = config.data.seq_len
    prompt_len = config.sequence_level.prompt_len
    packed = pack_texts(_random_text(max(8, args.pipeline_prompts // 4), 1), tokenizer, seq_len)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        meta = write_completions(
            os.path.join(workdir, "gen"),
            module,
            params,
            packed,
            prompt_len=prompt_len,
            max_new_tokens=seq_len + 1 - prompt_len,
            pad_id=tokenizer.pad_id,
            eos_id=tokenizer.eos_id,
            vocab_size=tokenizer.vocab_size,
            temperature=1.0,
            batch_size=config.sequence_level.batch_size,
            num_prompts=args.pipeline_prompts,
        )
        results["pipeline_generate_seconds"] = time.perf_counter() - start
        results["pipeline_generate_tokens_per_second"] = meta["tokens_per_second"]
        source = CompletionSource(os.path.join(workdir, "gen"))
        s = config.student
        student = lm_model(build_lm(transformer_config(s.model), seed=1), vocab_size=259)
        optimizer = optax.adamw(s.lr)
        batches = iter(completion_train_batches(source, batch_size=s.batch_size, seed=0))
        keep = ("inputs", "targets", "loss_mask")
        run = train_lm(
            make_lm_train_step(student, optimizer, loss=None),
            init_train_state(student, optimizer),
            None,
            batches,
            num_steps=args.pipeline_steps,
            steps_per_call=max(1, args.pipeline_steps // 2),
            prepare=lambda b: {k: b[k] for k in keep},
        )
        results["pipeline_finetune_tokens_per_second"] = run.tokens_per_second
        results["pipeline_finetune_seconds"] = run.seconds
    print(
        f"generation: batch {args.batch}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, {jax.devices()[0].platform}"
    )
    print("| path | tokens/s |\n|---|---:|")
    print(f"| KV cache | {results['cached_tokens_per_second']:,.0f} |")
    print(f"| no cache (recompute) | {results['uncached_tokens_per_second']:,.0f} |")
    print(
        f"| speed-up | {results['speedup']:.1f}× (same greedy tokens: "
        f"{results['same_greedy_tokens']}) |"
    )
    print(
        f"| pipeline: sample completions to array_record | "
        f"{results['pipeline_generate_tokens_per_second']:,.0f} |"
    )
    print(
        f"| pipeline: fine-tune student on them | "
        f"{results['pipeline_finetune_tokens_per_second']:,.0f} |"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

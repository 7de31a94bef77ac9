"""The `jaxkd cache-teacher` and `jaxkd generate` verbs (offline and sequence-level KD).

Both read a teacher saved with `jaxkd.lm.save_lm` (`experiments/lm_distill.py` writes one
to `<workdir>/teacher`) and a TFDS text dataset, and write an array_record dataset:

  jaxkd cache-teacher --teacher runs/lm_distill/teacher --out runs/cache --k 50
  jaxkd generate --teacher runs/lm_distill/teacher --out runs/completions \
      --prompt-len 32 --max-new-tokens 97 --temperature 1.0 --top-p 0.95
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from jaxkd.cli import ArgumentParser
from jaxkd.lm.topk_codec import TopKCodec


def _data_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="a directory written by save_lm")
    parser.add_argument("--out", required=True, help="output directory (must be new)")
    parser.add_argument(
        "--dataset",
        default="text_files/python_stdlib_small",
        help="TFDS text dataset (default: %(default)s)",
    )
    parser.add_argument("--split", default="train", help="TFDS split (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir")
    parser.add_argument("--seq-len", type=int, default=128, help="window length L")
    parser.add_argument("--max-documents", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)


def _load(args):
    from jaxkd.lm.models import lm_model, load_lm
    from jaxkd.text import load_packed, load_tokenizer

    module, params, meta = load_lm(args.teacher)
    tokenizer = load_tokenizer(meta["tokenizer"])
    packed = load_packed(
        args.dataset,
        args.split,
        tokenizer,
        args.seq_len,
        data_dir=args.data_dir,
        max_documents=args.max_documents,
    )
    model = lm_model(module, vocab_size=meta["vocab_size"])
    source = {"dataset": args.dataset, "split": args.split, "teacher": meta["params_sha256"]}
    return module, params, meta, tokenizer, packed, model, source


def cache_teacher(argv: Sequence[str]) -> int:
    """`jaxkd cache-teacher`: the teacher's top-k per token into array_record shards."""
    parser = ArgumentParser(
        "cache-teacher",
        "Run a saved teacher once over a dataset and store its top-k log-probs and ids per\n"
        "token, compactly coded (ids as combinatorial ranks, quantized probabilities), in\n"
        "array_record shards.",
    )
    _data_arguments(parser)
    parser.add_argument("--k", type=int, default=50, help="entries per token")
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--records-per-shard", type=int, default=4096)
    # The code's settings default to TopKCodec's own (docs/lm_distill.md, "The cache code").
    for field in dataclasses.fields(TopKCodec):
        if field.name in ("exact_top", "top_bits", "value_bits", "tail_bits", "alpha"):
            flag = "--" + field.name.replace("_", "-")
            parser.add_argument(flag, type=type(field.default), default=field.default)
    args = parser.parse_args(list(argv))
    from jaxkd.engine import TeacherState
    from jaxkd.lm.cache import write_topk_cache

    _, params, meta, _, packed, model, source = _load(args)
    codec = TopKCodec(
        vocab_size=meta["config"]["vocab_size"],
        k=args.k,
        exact_top=min(args.exact_top, args.k),
        top_bits=args.top_bits,
        value_bits=args.value_bits,
        tail_bits=args.tail_bits,
        alpha=args.alpha,
    )
    if args.k > meta["vocab_size"]:
        raise ValueError(f"`--k` {args.k} exceeds the vocabulary size {meta['vocab_size']}.")
    info = write_topk_cache(
        args.out,
        packed,
        TeacherState(params, model.state),
        model.apply,
        codec,
        batch_size=args.batch_size,
        records_per_shard=args.records_per_shard,
        max_windows=args.max_windows,
        metadata=source,
    )
    print(
        json.dumps(
            {k: info[k] for k in ("num_windows", "bytes_per_token", "record_bytes_per_token")}
        )
    )
    return 0


def generate(argv: Sequence[str]) -> int:
    """`jaxkd generate`: teacher completions of dataset prompts, as an array_record dataset."""
    parser = ArgumentParser(
        "generate",
        "Sample completions from a saved teacher (batched, KV cache, temperature/top-p, stop\n"
        "at EOS) for the first --prompt-len tokens of each window; write them as a dataset\n"
        "for sequence-level distillation (loss on completion tokens only).",
    )
    _data_arguments(parser)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=97)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--num-prompts", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    from jaxkd.lm.sequence_level import write_completions

    module, params, meta, tokenizer, packed, _, source = _load(args)
    info = write_completions(
        args.out,
        module,
        params,
        packed,
        prompt_len=args.prompt_len,
        max_new_tokens=args.max_new_tokens,
        pad_id=tokenizer.pad_id,
        eos_id=tokenizer.eos_id,
        vocab_size=meta["vocab_size"],
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        num_prompts=args.num_prompts,
        seed=args.seed,
        metadata=source,
    )
    print(
        json.dumps({k: info[k] for k in ("num_examples", "generated_tokens", "tokens_per_second")})
    )
    return 0

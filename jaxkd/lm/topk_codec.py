"""A fixed-size bit code for a teacher's top-k log-probabilities and token ids per token.

Per token, with vocabulary V and k entries (layout fixed by `TopKCodec`, so a window of
L tokens is L equal-size codes and decoding is vectorized numpy):

1. ids, sorted ascending, as the combinadic rank of their high parts plus their low bits
   (`jaxkd.lm.enumerative`): ⌈log2 C(V, k)⌉ bits at V = 151,936, k = 50 (647), the least
   a set of k ids costs without a prior on which ids are likely.
2. the tail mass `t = 1 − Σ_top-k p` as `√t` on `tail_bits` uniform levels; the decoded
   entries are renormalised to `Σ p̂ = 1 − t̂`, so the k + 1 buckets of
   `sparse_forward_kl(tail="bucket")` are reproduced.
3. the `m = exact_top` most probable entries: their positions in the id list as one
   combinadic rank (⌈log2 C(k, m)⌉ bits) and `√p` on `top_bits` levels each (`√p` keeps
   the absolute error of a large p, which the loss sees first-order, and the KL error of
   a small one, `δp² / 2p`, both small).
4. every other entry by its ratio `r = p / p_ref` to `p_ref`, the least decoded top
   probability: the token's range `[r_lo, 1]`, with `log r_lo` rounded down on a grid of
   `range_bits` bits over `[−16, 0]`, then `y = (r^α − r_lo^α) / (1 − r_lo^α)` on
   `2^value_bits` uniform levels (α → 0 is a logarithmic scale). The entries with the
   largest levels get `refine_bits` more bits each (the j-th largest, ties broken by
   position, `refine_bits[j]` bits that split its level): the decoder sees the levels, so
   this costs no positions, and it spends bits where the absolute error, which moves the
   training loss, is largest.

Decoded probabilities are the mean of each cell (uniform in the companded value). See
`benchmarks/topk_cache.py` for bytes/token and KL errors at V = 259 and V = 151,936.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxkd.lm.enumerative import _LIMB, IdSetCode

_RANGE = 16.0  # nats below p_ref that the per-token range of the other entries can reach
_REFINE = (3,) * 4 + (2,) * 10 + (1,) * 16


def _pack(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """[N, F] non-negative ints, per-column widths [F] -> [N, Σ widths] bits (MSB first)."""
    widths = np.asarray(widths, np.int64)
    top = int(widths.max(initial=0))
    shifts = widths[:, None] - 1 - np.arange(top)  # [F, top]; negative: not a bit
    keep = shifts >= 0
    bits = (values.astype(np.int64)[..., None] >> np.maximum(shifts, 0)) & 1
    return bits[:, keep].astype(np.uint8)


def _unpack(bits: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Inverse of `_pack`: [N, Σ widths] bits -> [N, F] int64."""
    widths = np.asarray(widths, np.int64)
    top = int(widths.max(initial=0))
    shifts = widths[:, None] - 1 - np.arange(top)
    keep = shifts >= 0
    full = np.zeros((bits.shape[0], *shifts.shape), np.int64)
    full[:, keep] = bits
    return (full << np.maximum(shifts, 0)).sum(-1)


def _sqrt_quantize(p: np.ndarray, bits: int) -> np.ndarray:
    return np.rint(np.sqrt(np.clip(p, 0.0, 1.0)) * ((1 << bits) - 1)).astype(np.int64)


def _sqrt_dequantize(q: np.ndarray, bits: int) -> np.ndarray:
    """Mean of p = u² over level q's interval of u (never 0, so log p̂ stays finite)."""
    levels = (1 << bits) - 1
    a = np.clip((q - 0.5) / levels, 0.0, 1.0)
    b = np.clip((q + 0.5) / levels, 0.0, 1.0)
    return (a * a + a * b + b * b) / 3.0


@dataclasses.dataclass(frozen=True)
class TopKCodec:
    """Fixed-size code of k (log-prob, id) pairs per token over a vocabulary of V ids.

    Attributes:
      vocab_size: V, ids are in [0, V).
      k: entries per token, 1 <= k <= V.
      exact_top: m, the most probable entries stored on their own, 0 <= m <= k.
      top_bits: bits of each top entry's `√p`.
      value_bits: bits of each other entry's level.
      refine_bits: extra bits of the other entries with the largest levels, largest first
        (entries beyond k − m are dropped).
      tail_bits: bits of `√t`, t the tail mass.
      range_bits: bits of the per-token range of the other entries.
      alpha: companding power of the other entries' ratios, in (0, 1].
    """

    vocab_size: int
    k: int
    exact_top: int = 4
    top_bits: int = 11
    value_bits: int = 3
    refine_bits: tuple[int, ...] = _REFINE
    tail_bits: int = 11
    range_bits: int = 6
    alpha: float = 0.1

    def __post_init__(self):
        if not 1 <= self.k <= self.vocab_size:
            raise ValueError(f"`k` must be in [1, vocab_size={self.vocab_size}], got {self.k}.")
        if not 0 <= self.exact_top <= self.k:
            raise ValueError(f"`exact_top` must be in [0, k={self.k}], got {self.exact_top}.")
        for name in ("top_bits", "value_bits", "tail_bits", "range_bits"):
            if not 1 <= getattr(self, name) <= 24:
                raise ValueError(f"`{name}` must be in [1, 24], got {getattr(self, name)}.")
        refine = tuple(int(b) for b in self.refine_bits)[: self.k - self.exact_top]
        if any(not 0 <= b <= 16 for b in refine):
            raise ValueError(f"`refine_bits` must be in [0, 16], got {self.refine_bits}.")
        object.__setattr__(self, "refine_bits", refine)  # a JSON list from cache.json
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"`alpha` must be in (0, 1], got {self.alpha}.")

    @functools.cached_property
    def _ids(self) -> IdSetCode:
        return IdSetCode(self.vocab_size, self.k)

    @functools.cached_property
    def _positions(self) -> IdSetCode:
        return IdSetCode(self.k, max(self.exact_top, 1))

    @functools.cached_property
    def _widths(self) -> dict[str, np.ndarray]:
        """Field name -> bit widths of its columns, in code order."""
        ids, m, rest = self._ids, self.exact_top, self.k - self.exact_top
        return {
            "id_rank": np.full(1, ids.rank_bits),
            "id_low": np.full(self.k, ids.low_bits),
            "tail": np.full(1, self.tail_bits),
            "top_rank": np.full(1, self._positions.rank_bits if m else 0),
            "top_low": np.full(m, self._positions.low_bits),
            "top": np.full(m, self.top_bits),
            "range": np.full(1 if rest else 0, self.range_bits),
            "level": np.full(rest, self.value_bits),
            "refine": np.asarray(self.refine_bits, np.int64),
        }

    @property
    def num_bits(self) -> int:
        """Bits per token."""
        return int(sum(w.sum() for w in self._widths.values()))

    @property
    def bytes_per_token(self) -> int:
        """Bytes per token (each token's code is padded to whole bytes)."""
        return -(-self.num_bits // 8)

    def _check(self, logprobs: np.ndarray, ids: np.ndarray) -> None:
        if logprobs.ndim != 2 or logprobs.shape != ids.shape or logprobs.shape[1] != self.k:
            raise ValueError(
                f"`logprobs` and `ids` must both be [N, k={self.k}], got "
                f"{logprobs.shape} and {ids.shape}."
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"`ids` must be in [0, {self.vocab_size}).")
        if ids.size and np.any(np.diff(np.sort(ids, 1), axis=1) == 0):
            raise ValueError("`ids` must be distinct within each row.")

    def _grid(self, range_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(r_lo^α, 1 − r_lo^α) [N, 1] of the decoded per-token range."""
        log_lo = -range_q * (_RANGE / (1 << self.range_bits))
        low = np.exp(self.alpha * log_lo)[:, None]
        return low, 1.0 - low

    def _cell_mean(self, low, span, y0, y1):
        """Mean of r = (low + span·y)^(1/α) over y in [y0, y1] (y1 > y0)."""
        power = 1.0 / self.alpha + 1.0
        a, b = low + span * y0, low + span * y1
        return (b**power - a**power) / (power * span * (y1 - y0))

    def _refined(self, level: np.ndarray) -> np.ndarray:
        """Order of the other entries by level, largest first, ties by position."""
        return np.argsort(-level, axis=1, kind="stable")[:, : len(self.refine_bits)]

    def encode(self, logprobs: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Codes of N tokens' top-k.

        Args:
          logprobs: `[N, k]` log-probabilities of the full distribution (any order).
          ids: `[N, k]` their distinct token ids.

        Returns:
          `[N, bytes_per_token]` uint8.
        """
        logprobs = np.asarray(logprobs, np.float64)
        ids = np.asarray(ids, np.int64)
        self._check(logprobs, ids)
        n, k, m = ids.shape[0], self.k, self.exact_top
        order = np.argsort(ids, axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, 1)
        probs = np.exp(np.take_along_axis(logprobs, order, 1))
        rank, low = self._ids.rank(ids)
        # Ranks are limbs, least significant first: written most significant bit first.
        fields = {"id_rank": _pack(rank[:, ::-1], np.full(rank.shape[1], _LIMB)), "id_low": low}
        tail = 1.0 - probs.sum(1, keepdims=True)
        fields["tail"] = _sqrt_quantize(tail, self.tail_bits)
        by_prob = np.argsort(-probs, axis=1, kind="stable")
        top_pos, rest_pos = np.sort(by_prob[:, :m], 1), np.sort(by_prob[:, m:], 1)
        top_q = _sqrt_quantize(np.take_along_axis(probs, top_pos, 1), self.top_bits)
        fields["top"] = top_q
        ref = np.ones((n, 1))
        if m:
            top_rank, fields["top_low"] = self._positions.rank(top_pos)
            fields["top_rank"] = _pack(top_rank[:, ::-1], np.full(top_rank.shape[1], _LIMB))
            ref = _sqrt_dequantize(top_q, self.top_bits).min(1, keepdims=True)
        if k > m:
            ratio = np.clip(np.take_along_axis(probs, rest_pos, 1) / ref, 1e-300, 1.0)
            grid = 1 << self.range_bits
            range_q = np.ceil(-np.log(ratio.min(1)) / (_RANGE / grid))
            range_q = np.clip(range_q, 1, grid).astype(np.int64)
            low, span = self._grid(range_q)
            levels = (1 << self.value_bits) - 1
            z = np.clip((ratio**self.alpha - low) / span, 0.0, 1.0) * levels
            level = np.rint(z).astype(np.int64)
            picked = self._refined(level)
            zp, lp = np.take_along_axis(z, picked, 1), np.take_along_axis(level, picked, 1)
            lo, hi = np.maximum(lp - 0.5, 0.0), np.minimum(lp + 0.5, levels)
            parts = 1 << np.asarray(self.refine_bits, np.int64)
            sub = np.clip(np.floor((zp - lo) / (hi - lo) * parts), 0, parts - 1)
            fields.update(range=range_q[:, None], level=level, refine=sub.astype(np.int64))
        widths = self._widths
        bits = []
        for name, width in widths.items():
            if name in ("id_rank", "top_rank"):
                value = fields.get(name, np.zeros((n, 0), np.uint8))
                bits.append(value[:, value.shape[1] - int(width.sum()) :])
            elif width.size:
                bits.append(_pack(fields[name].reshape(n, -1), width))
        return np.packbits(np.concatenate(bits, axis=1), axis=1)

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of N tokens back from their codes.

        Args:
          codes: `[N, bytes_per_token]` uint8 from `encode`.

        Returns:
          `(logprobs [N, k] float32, ids [N, k] int32)`, sorted by id; the probabilities
          sum to `1 − t̂` (the decoded tail mass). Every entry keeps a positive probability,
          so log-probs and losses stay finite.
        """
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.bytes_per_token or codes.dtype != np.uint8:
            raise ValueError(
                f"`codes` must be [N, {self.bytes_per_token}] uint8, got {codes.shape} "
                f"{codes.dtype}."
            )
        n, k, m = codes.shape[0], self.k, self.exact_top
        bits = np.unpackbits(codes, axis=1, count=self.num_bits)
        fields, at = {}, 0
        for name, width in self._widths.items():
            size = int(width.sum())
            chunk = bits[:, at : at + size]
            at += size
            if name in ("id_rank", "top_rank"):
                limbs = -(-size // _LIMB) if size else 0
                padded = np.concatenate(
                    [np.zeros((n, limbs * _LIMB - size), np.uint8), chunk], axis=1
                )
                fields[name] = _unpack(padded, np.full(limbs, _LIMB))[:, ::-1]
            else:
                fields[name] = _unpack(chunk, width)

        def limbs_of(code: IdSetCode, rank: np.ndarray) -> np.ndarray:
            out = np.zeros((n, code.limbs), np.int64)
            out[:, : rank.shape[1]] = rank
            return out

        ids = self._ids.unrank(limbs_of(self._ids, fields["id_rank"]), fields["id_low"])
        tail = _sqrt_dequantize(fields["tail"], self.tail_bits)
        probs = np.zeros((n, k))
        taken = np.zeros((n, k), bool)
        ref = np.ones((n, 1))
        if m:
            positions = self._positions
            pos = positions.unrank(limbs_of(positions, fields["top_rank"]), fields["top_low"])
            top = _sqrt_dequantize(fields["top"], self.top_bits)
            np.put_along_axis(probs, pos, top, 1)
            np.put_along_axis(taken, pos, True, 1)
            ref = top.min(1, keepdims=True)
        if k > m:
            low, span = self._grid(fields["range"][:, 0])
            levels = (1 << self.value_bits) - 1
            level = fields["level"]
            lo = np.maximum(level - 0.5, 0.0)
            hi = np.minimum(level + 0.5, levels)
            picked = self._refined(level)
            parts = 1 << np.asarray(self.refine_bits, np.int64)
            lp = np.take_along_axis(level, picked, 1)
            plo, phi = np.maximum(lp - 0.5, 0.0), np.minimum(lp + 0.5, levels)
            width = (phi - plo) / parts
            np.put_along_axis(lo, picked, plo + fields["refine"] * width, 1)
            np.put_along_axis(hi, picked, plo + (fields["refine"] + 1) * width, 1)
            rest = ref * self._cell_mean(low, span, lo / levels, hi / levels)
            probs[~taken] = rest.reshape(-1)
        # The tail and the top entries are stored finely: the other entries absorb the
        # rounding, scaled to the mass left by them (all entries when nothing is left).
        top_mass = np.where(taken, probs, 0.0).sum(1, keepdims=True)
        rest_mass = probs.sum(1, keepdims=True) - top_mass
        left = 1.0 - tail - top_mass
        fits = (left > 0) & (rest_mass > 0)
        scale_rest = np.where(fits, left / np.where(fits, rest_mass, 1.0), 1.0)
        probs = np.where(taken, probs, probs * scale_rest)
        total = probs.sum(1, keepdims=True)
        probs = np.where(fits, probs, probs * (1.0 - tail) / total)
        logprobs = np.log(np.maximum(probs, 1e-300))
        return logprobs.astype(np.float32), ids.astype(np.int32)

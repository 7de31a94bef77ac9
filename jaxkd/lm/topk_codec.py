"""A fixed-size bit code for a teacher's top-k log-probabilities and token ids per token.

Per token, with vocabulary V and k entries (layout fixed by `TopKCodec`, so a window of
L tokens is L equal-size codes and decoding is vectorized numpy):

1. ids, sorted ascending, in Elias–Fano form: the low `l = ⌊log2(V/k)⌋` bits of each id,
   plus the high parts as a unary bit vector of `k + (V−1 >> l) + 1` bits — about
   `k (2 + log2(V/k))` bits, close to the `log2 C(V, k)` a set of k ids needs (no code
   can do better without knowing which ids are likely).
2. the tail mass `t = 1 − Σ_top-k p` as `log t`, uniform over `[−32, 0]` with
   `tail_bits` bits; the decoded distribution is renormalised to `Σ_top-k p̂ = 1 − t̂`, so
   the k + 1 buckets of `sparse_forward_kl(tail="bucket")` are reproduced.
3. the `m = exact_top` most probable entries: their position in the sorted id list and
   `log p` uniform over `[−max_log, 0]` with `top_bits` bits (a coarse step on the mass
   that dominates the KL would cost most).
4. every other entry: `u = (p / p_ref)^α` uniform over (0, 1] with `value_bits` bits,
   where `p_ref` is the least of the m decoded top probabilities (so `u ≤ 1`). Power-law
   companding spends the few levels where the KL is sensitive: an error `δu` costs about
   `p (δu / (α u))² / 2` nats, small for the many tiny entries.

The mass distortion of step 4 is what the KL error budget goes to; see
`benchmarks/topk_cache.py` for bytes/token and KL error at V = 259 and V = 151,936.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

_TAIL_RANGE = 32.0


def _bits_for(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def _to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """[N, n] unsigned ints -> [N, n * width] bits, most significant first."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    bits = (values.astype(np.uint64)[..., None] >> shifts) & np.uint64(1)
    return bits.reshape(values.shape[0], -1).astype(np.uint8)


def _from_bits(bits: np.ndarray, width: int) -> np.ndarray:
    """[N, n * width] bits -> [N, n] int64."""
    weights = (np.uint64(1) << np.arange(width - 1, -1, -1, dtype=np.uint64)).astype(np.int64)
    return bits.reshape(bits.shape[0], -1, width).astype(np.int64) @ weights


def _quantize(x: np.ndarray, low: float, high: float, bits: int) -> np.ndarray:
    levels = (1 << bits) - 1
    q = np.rint((np.clip(x, low, high) - low) / (high - low) * levels)
    return q.astype(np.int64)


def _dequantize(q: np.ndarray, low: float, high: float, bits: int) -> np.ndarray:
    return low + q.astype(np.float64) * (high - low) / ((1 << bits) - 1)


@dataclasses.dataclass(frozen=True)
class TopKCodec:
    """Fixed-size code of k (log-prob, id) pairs per token over a vocabulary of V ids.

    Attributes:
      vocab_size: V, ids are in [0, V).
      k: entries per token, 1 <= k <= V.
      exact_top: m, entries stored with `top_bits` (the most probable ones), 0 <= m <= k.
      top_bits: bits of the m top log-probs.
      value_bits: bits of each other entry.
      tail_bits: bits of the log tail mass.
      alpha: companding power of the other entries, in (0, 1].
      max_log: the top log-probs are clipped to [−max_log, 0].
    """

    vocab_size: int
    k: int
    exact_top: int = 4
    top_bits: int = 14
    value_bits: int = 4
    tail_bits: int = 14
    alpha: float = 0.4
    max_log: float = 24.0

    def __post_init__(self):
        if not 1 <= self.k <= self.vocab_size:
            raise ValueError(f"`k` must be in [1, vocab_size={self.vocab_size}], got {self.k}.")
        if not 0 <= self.exact_top <= self.k:
            raise ValueError(f"`exact_top` must be in [0, k={self.k}], got {self.exact_top}.")
        for name in ("top_bits", "value_bits", "tail_bits"):
            if not 1 <= getattr(self, name) <= 24:
                raise ValueError(f"`{name}` must be in [1, 24], got {getattr(self, name)}.")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"`alpha` must be in (0, 1], got {self.alpha}.")
        if self.exact_top == 0 and self.k > 0 and self.value_bits < 2:
            raise ValueError("`value_bits` must be >= 2 when `exact_top` is 0.")

    @property
    def low_bits(self) -> int:
        """l, the Elias–Fano low bits per id."""
        return max(0, math.floor(math.log2(self.vocab_size / self.k)))

    @property
    def high_length(self) -> int:
        """Length of the Elias–Fano unary high-part vector."""
        return self.k + ((self.vocab_size - 1) >> self.low_bits) + 1

    @property
    def position_bits(self) -> int:
        return _bits_for(self.k)

    @property
    def num_bits(self) -> int:
        """Bits per token."""
        m = self.exact_top
        return (
            self.high_length
            + self.k * self.low_bits
            + self.tail_bits
            + m * (self.position_bits + self.top_bits)
            + (self.k - m) * self.value_bits
        )

    @property
    def bytes_per_token(self) -> int:
        """Bytes per token (each token's code is padded to whole bytes)."""
        return -(-self.num_bits // 8)

    def _centroids(self) -> np.ndarray:
        """Mean of `p / p_ref = u^(1/α)` over each level's interval of u (uniform u).

        Rounding `u · (2^b − 1)` makes level j the interval `[(j − ½), (j + ½)] / (2^b − 1)`
        clipped to [0, 1]; its mean mass is never 0, so an entry rounded to level 0 keeps
        a small positive probability (a zero would make its KL term infinite).
        """
        levels = (1 << self.value_bits) - 1
        j = np.arange(levels + 1, dtype=np.float64)
        a, b = np.clip((j - 0.5) / levels, 0, 1), np.clip((j + 0.5) / levels, 0, 1)
        power = 1.0 / self.alpha + 1.0
        return (b**power - a**power) / (power * (b - a))

    def _check(self, logprobs: np.ndarray, ids: np.ndarray) -> None:
        if logprobs.ndim != 2 or logprobs.shape != ids.shape or logprobs.shape[1] != self.k:
            raise ValueError(
                f"`logprobs` and `ids` must both be [N, k={self.k}], got "
                f"{logprobs.shape} and {ids.shape}."
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"`ids` must be in [0, {self.vocab_size}).")

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
        logprobs = np.take_along_axis(logprobs, order, 1)
        rows = np.arange(n)[:, None]
        # Elias–Fano: unary high parts and fixed-width low parts of the sorted ids.
        low_mask = (1 << self.low_bits) - 1
        high = np.zeros((n, self.high_length), np.uint8)
        high[rows, (ids >> self.low_bits) + np.arange(k)] = 1
        fields = [high, _to_bits(ids & low_mask, self.low_bits)] if self.low_bits else [high]
        probs = np.exp(logprobs)
        tail = np.clip(1.0 - probs.sum(1, keepdims=True), 1e-300, 1.0)
        fields.append(
            _to_bits(_quantize(np.log(tail), -_TAIL_RANGE, 0.0, self.tail_bits), self.tail_bits)
        )
        rank = np.argsort(-logprobs, axis=1, kind="stable")
        top_pos, rest_pos = np.sort(rank[:, :m], 1), np.sort(rank[:, m:], 1)
        top_q = _quantize(
            np.take_along_axis(logprobs, top_pos, 1), -self.max_log, 0.0, self.top_bits
        )
        if m:
            fields += [_to_bits(top_pos, self.position_bits), _to_bits(top_q, self.top_bits)]
            ref = np.exp(_dequantize(top_q, -self.max_log, 0.0, self.top_bits).min(1))[:, None]
        else:
            ref = np.ones((n, 1))
        if k > m:
            ratio = np.take_along_axis(probs, rest_pos, 1) / ref
            u = np.clip(ratio, 0.0, 1.0) ** self.alpha
            levels = (1 << self.value_bits) - 1
            fields.append(_to_bits(np.rint(u * levels).astype(np.int64), self.value_bits))
        bits = np.concatenate(fields, axis=1)
        return np.packbits(bits, axis=1)

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of N tokens back from their codes.

        Args:
          codes: `[N, bytes_per_token]` uint8 from `encode`.

        Returns:
          `(logprobs [N, k] float32, ids [N, k] int32)`, sorted by id; the probabilities
          sum to `1 − t̂` (the decoded tail mass). An entry quantized to zero mass gets a
          log-prob of −1e4 (finite, so losses stay finite).
        """
        codes = np.asarray(codes, np.uint8)
        if codes.ndim != 2 or codes.shape[1] != self.bytes_per_token:
            raise ValueError(
                f"`codes` must be [N, {self.bytes_per_token}] uint8, got {codes.shape}."
            )
        n, k, m = codes.shape[0], self.k, self.exact_top
        bits = np.unpackbits(codes, axis=1, count=self.num_bits)
        at = self.high_length
        _, cols = np.nonzero(bits[:, :at])
        ids = (cols.reshape(n, k) - np.arange(k)) << self.low_bits
        if self.low_bits:
            width = k * self.low_bits
            ids = ids | _from_bits(bits[:, at : at + width], self.low_bits)
            at += width
        log_tail = _dequantize(
            _from_bits(bits[:, at : at + self.tail_bits], self.tail_bits),
            -_TAIL_RANGE,
            0.0,
            self.tail_bits,
        )
        at += self.tail_bits
        probs = np.zeros((n, k))
        rows = np.arange(n)[:, None]
        ref = np.ones((n, 1))
        taken = np.zeros((n, k), bool)
        if m:
            pos = _from_bits(bits[:, at : at + m * self.position_bits], self.position_bits)
            at += m * self.position_bits
            top = _dequantize(
                _from_bits(bits[:, at : at + m * self.top_bits], self.top_bits),
                -self.max_log,
                0.0,
                self.top_bits,
            )
            at += m * self.top_bits
            probs[rows, pos] = np.exp(top)
            taken[rows, pos] = True
            ref = np.exp(top.min(1))[:, None]
        if k > m:
            q = _from_bits(bits[:, at : at + (k - m) * self.value_bits], self.value_bits)
            rest = ref * self._centroids()[q]
            probs[~taken] = rest.reshape(-1)
        # The tail and the top entries are stored finely: the coarse entries absorb the
        # rounding, scaled to the mass left by them (all entries when nothing is left).
        top_mass = np.where(taken, probs, 0.0).sum(1, keepdims=True)
        rest_mass = probs.sum(1, keepdims=True) - top_mass
        left = 1.0 - np.exp(log_tail) - top_mass
        fits = (left > 0) & (rest_mass > 0)
        scale_rest = np.where(fits, left / np.where(fits, rest_mass, 1.0), 1.0)
        probs = np.where(taken, probs, probs * scale_rest)
        total = probs.sum(1, keepdims=True)
        probs = np.where(fits, probs, probs * (1.0 - np.exp(log_tail)) / total)
        logprobs = np.where(probs > 0, np.log(np.maximum(probs, 1e-300)), -1e4)
        return logprobs.astype(np.float32), ids.astype(np.int32)

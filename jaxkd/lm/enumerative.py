"""Enumerative (combinatorial number system) code of a set of k ids out of V, vectorized.

A set of k distinct ids x_1 < … < x_k in [0, V) is split into `l` low bits, stored as they
are, and high parts h_i = x_i >> l, a non-decreasing sequence over `H = ⌈V / 2^l⌉` values
(for l = 0, h_i = x_i − (i − 1) over H = V − k + 1). Adding i − 1 makes it strictly
increasing, y_i = h_i + i − 1 < Y = H + k − 1, and its combinadic rank

    R = Σ_i C(y_i, i),   0 <= R < C(Y, k),

is a bijection with the multisets, so the high parts cost ⌈log2 C(Y, k)⌉ bits. For l = 0
this is exactly ⌈log2 C(V, k)⌉, the least any code of a k-set can spend without a prior;
`l` is the smallest that keeps the table of C(y, i) small (at V = 151,936, k = 50: l = 5,
647 bits, the minimum).

Ranks are multi-limb integers (32-bit limbs in int64, least significant first), so
encoding is one gather and a sum; decoding finds each y_i with `searchsorted` on log2 C
and corrects it exactly, vectorized over tokens.
"""

from __future__ import annotations

import functools
import math

import numpy as np

_LIMB = 32
_MASK = (1 << _LIMB) - 1
_TABLE_LIMIT = 1 << 22  # entries of the C(y, i) table (limbs), 16 MiB


def _count_bits(count: int) -> int:
    """Bits to write a rank in [0, count)."""
    return (count - 1).bit_length()


def _normalize(limbs: np.ndarray) -> np.ndarray:
    """Carries int64 limbs [..., L] (each in [0, 2^62)) into [0, 2^32)."""
    limbs = limbs.copy()
    for j in range(limbs.shape[-1] - 1):
        limbs[..., j + 1] += limbs[..., j] >> _LIMB
        limbs[..., j] &= _MASK
    return limbs


def _subtract(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a − b for normalized limbs [..., L] with a >= b, borrows resolved without a loop.

    A limb borrows from the next when its difference is negative, or zero and itself
    borrowed: the borrow into limb j comes from the nearest lower limb whose difference
    is not zero.
    """
    diff = a - b
    width = diff.shape[-1]
    index = np.where(diff != 0, np.arange(width), -1)
    source = np.maximum.accumulate(index, axis=-1)[..., :-1]  # nearest nonzero at or below
    negative = np.take_along_axis(diff, np.maximum(source, 0), -1) < 0
    borrow = np.concatenate(
        [np.zeros((*diff.shape[:-1], 1), bool), negative & (source >= 0)], axis=-1
    )
    return (diff - borrow) & _MASK


def _log2(limbs: np.ndarray) -> np.ndarray:
    """log2 of normalized limbs [..., L] (float64, −inf for 0), to ~1e-13."""
    width = limbs.shape[-1]
    with np.errstate(divide="ignore"):
        if width * _LIMB < 1000:  # the value itself fits in a float64
            return np.log2(limbs @ (2.0 ** (_LIMB * np.arange(width))))
        nonzero = limbs != 0
        top = width - 1 - np.argmax(nonzero[..., ::-1], axis=-1)
        padded = np.concatenate([np.zeros((*limbs.shape[:-1], 2), limbs.dtype), limbs], -1)
        value = np.zeros(limbs.shape[:-1])
        for shift in range(3):  # the top three limbs
            limb = np.take_along_axis(padded, (top + 2 - shift)[..., None], -1)[..., 0]
            value += limb.astype(np.float64) * 2.0 ** (-_LIMB * shift)
        return np.where(nonzero.any(-1), np.log2(value) + _LIMB * top, -np.inf)


def _less_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a <= b for normalized limbs [..., L]."""
    diff = a - b
    top = diff.shape[-1] - 1 - np.argmax(diff[..., ::-1] != 0, axis=-1)
    return np.take_along_axis(diff, top[..., None], -1)[..., 0] <= 0  # the top differing limb


@functools.lru_cache(maxsize=8)
def _table(rows: int, k: int, limbs: int) -> tuple[np.ndarray, np.ndarray]:
    """C(y, i) for y < rows, i = 1..k as limbs [k, rows, L] (int64) and log2 [k, rows].

    Entries above C(rows, k) are capped there: no rank reaches them, and capping keeps
    every column non-decreasing in y.
    """
    cap = math.comb(rows, k)
    data = bytearray()
    row = [0] * (k + 1)  # row[i] = C(y, i), Pascal's rule from y = 0
    for y in range(rows):
        row = [1] + [row[i] + row[i - 1] for i in range(1, k + 1)] if y else [1] + [0] * k
        data += b"".join(min(c, cap).to_bytes(4 * limbs, "little") for c in row[1:])
    table = np.frombuffer(bytes(data), "<u4").reshape(rows, k, limbs).astype(np.int64)
    table = np.ascontiguousarray(table.transpose(1, 0, 2))  # one column per i
    table.flags.writeable = False
    logs = _log2(table)
    logs.flags.writeable = False
    return table, logs


@functools.lru_cache(maxsize=64)
def _layout(vocab_size: int, k: int) -> tuple[int, int, int]:
    """(low bits l, table rows Y, rank bits): fewest bits with a table under the limit."""
    best = None
    for low in range(max(1, vocab_size - 1).bit_length() + 1):
        high = vocab_size - k + 1 if low == 0 else -(-vocab_size // (1 << low))
        rows = high + k - 1
        rank_bits = _count_bits(math.comb(rows, k))
        size = 0 if rank_bits == 0 else rows * k * (rank_bits // _LIMB + 2)
        key = (k * low + rank_bits, size)
        if size <= _TABLE_LIMIT and (best is None or key < best[0]):
            best = (key, (low, rows, rank_bits))
    return best[1]


class IdSetCode:
    """Enumerative code of sorted k-subsets of [0, V) (see the module docstring).

    Args:
      vocab_size: V.
      k: ids per set, 1 <= k <= V.
    """

    def __init__(self, vocab_size: int, k: int):
        self.vocab_size, self.k = vocab_size, k
        self.low_bits, self.rows, self.rank_bits = _layout(vocab_size, k)
        self.limbs = self.rank_bits // _LIMB + 2  # one spare limb for the carries of a sum

    @property
    def num_bits(self) -> int:
        """Bits per set: the rank of the high parts, then k low parts."""
        return self.rank_bits + self.k * self.low_bits

    def _high(self, ids: np.ndarray) -> np.ndarray:
        """y_i (0-based i) of sorted ids [N, k]."""
        offsets = np.arange(self.k)
        return ids if self.low_bits == 0 else (ids >> self.low_bits) + offsets

    def rank(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted ids [N, k] -> (rank limbs [N, L] int64, low parts [N, k] int64)."""
        low = ids & ((1 << self.low_bits) - 1)
        if self.rank_bits == 0:
            return np.zeros((len(ids), self.limbs), np.int64), low
        table, _ = _table(self.rows, self.k, self.limbs)
        terms = table[np.arange(self.k), self._high(ids)]  # C(y_i, i + 1): [N, k, L]
        return _normalize(terms.sum(1)), low

    def unrank(self, rank: np.ndarray, low: np.ndarray) -> np.ndarray:
        """(rank limbs [N, L], low parts [N, k]) -> sorted ids [N, k] int64."""
        n, k = rank.shape[0], self.k
        y = np.zeros((n, k), np.int64)
        if self.rank_bits == 0:
            y[:] = np.arange(k)
        else:
            table, logs = _table(self.rows, k, self.limbs)
            rest = rank.copy()
            for i in range(k - 1, -1, -1):  # y_i = max{y : C(y, i + 1) <= rest}
                column, log_column = table[i], logs[i]
                log_rest = _log2(rest)
                guess = np.searchsorted(log_column, log_rest, side="right") - 1
                guess = np.clip(guess, i, self.rows - 1)
                # Both logs are exact to ~1e-13 and adjacent C(y, i) differ by at least
                # log2(1 + 1/Y): a guess is off by at most one, and only when log_rest is
                # that close to a table entry; those guesses are checked exactly.
                up = np.minimum(guess + 1, self.rows - 1)
                with np.errstate(invalid="ignore"):  # −inf − −inf: checked exactly
                    near = ~(log_rest - log_column[guess] >= 1e-9) | (
                        (up > guess) & ~(log_column[up] - log_rest >= 1e-9)
                    )
                if near.any():
                    rows = np.flatnonzero(near)
                    g, u, r = guess[rows], up[rows], rest[rows]
                    g = g - ~_less_equal(column[g], r)
                    g = np.where((u > g) & _less_equal(column[np.minimum(g + 1, u)], r), g + 1, g)
                    guess[rows] = g
                y[:, i] = guess
                rest = _subtract(rest, column[guess])
        if self.low_bits == 0:
            return y
        return ((y - np.arange(k)) << self.low_bits) | low

"""The enumerative code of id sets: exact round trips and the ⌈log2 C(V, k)⌉ size."""

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxkd.lm.enumerative import IdSetCode


@st.composite
def _id_sets(draw):
    vocab = draw(st.sampled_from([1, 2, 7, 64, 259, 1000, 151_936]))
    k = draw(st.integers(1, min(vocab, 60)))
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["random", "lowest", "highest", "ends"]))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if kind == "lowest":
            rows.append(np.arange(k))
        elif kind == "highest":
            rows.append(np.arange(vocab - k, vocab))
        elif kind == "ends" and k >= 2:  # ids 0 and V − 1 both in the set
            middle = 1 + rng.choice(vocab - 2, k - 2, replace=False)
            rows.append(np.concatenate([[0, vocab - 1], middle]))
        else:
            rows.append(rng.choice(vocab, k, replace=False))
    return vocab, k, np.sort(np.stack(rows), axis=1).astype(np.int64)


@settings(max_examples=60, deadline=None)
@given(_id_sets())
def test_rank_then_unrank_returns_the_sorted_ids(case):
    vocab, k, ids = case
    code = IdSetCode(vocab, k)
    rank, low = code.rank(ids)
    np.testing.assert_array_equal(code.unrank(rank, low), ids)
    assert code.num_bits <= k * max(1, math.ceil(math.log2(vocab)))


def test_every_set_of_a_small_vocabulary_gets_a_distinct_rank_below_the_count():
    vocab, k = 9, 4
    sets = np.array(list(itertools.combinations(range(vocab), k)))
    code = IdSetCode(vocab, k)
    rank, low = code.rank(sets)
    values = [sum(int(limb) << (32 * j) for j, limb in enumerate(row)) for row in rank]
    assert sorted(values) == list(range(math.comb(vocab, k)))  # a bijection onto [0, C)
    np.testing.assert_array_equal(code.unrank(rank, low), sets)


def test_large_vocabulary_costs_the_least_a_set_can():
    code = IdSetCode(151_936, 50)
    assert code.num_bits == math.ceil(math.log2(math.comb(151_936, 50))) == 647
    assert IdSetCode(259, 50).num_bits == 180 and IdSetCode(259, 259).num_bits == 0

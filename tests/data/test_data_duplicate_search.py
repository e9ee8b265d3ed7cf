"""The perceptual duplicate search (multi-index hashing) against an all-pairs reference on planted hashes."""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from rcl_hf.data import duplicates
from rcl_hf.data.duplicates import _close_pairs, _perceptual_components


# --------------------------------------------------------------------------- the reference: compare all pairs
def all_pairs(values: np.ndarray, max_distance: int) -> Set[Tuple[int, int]]:
    """Every pair ``i < j`` within ``max_distance``, from the full ``n x n`` distance matrix."""
    close = np.triu(np.bitwise_count(values[:, None] ^ values[None, :]) <= max_distance, 1)
    i, j = np.nonzero(close)
    return set(zip(i.tolist(), j.tolist()))


def all_pairs_components(hashes: Sequence[Optional[int]], max_distance: int) -> List[List[int]]:
    """The groups of the former all-pairs search (components of two or more, sorted by smallest member)."""
    valid = [i for i, h in enumerate(hashes) if h is not None]
    arr = np.array([hashes[i] for i in valid], dtype=np.uint64)
    pairs = sorted(all_pairs(arr, max_distance))
    rows = np.array([p[0] for p in pairs], dtype=np.int64)
    cols = np.array([p[1] for p in pairs], dtype=np.int64)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(len(valid), len(valid)))
    labels = connected_components(graph, directed=False)[1]
    comps: Dict[int, List[int]] = {}
    for k, lab in enumerate(labels):
        comps.setdefault(int(lab), []).append(valid[k])
    return sorted((c for c in comps.values() if len(c) > 1), key=lambda c: c[0])


# --------------------------------------------------------------------------- planted data
def flip(value: int, rng: np.random.Generator, n_bits: int) -> int:
    """``value`` with ``n_bits`` distinct random bits flipped (Hamming distance exactly ``n_bits``)."""
    for b in rng.choice(64, size=n_bits, replace=False):
        value ^= 1 << int(b)
    return value


def planted(max_distance: int, seed: int = 0) -> List[Optional[int]]:
    """Random 64-bit hashes plus near-copies at every distance 0..d+1, chains, blank-image copies and
    a "dark" population that shares its 44 high bits (one huge bucket in every band but the lowest)."""
    rng = np.random.default_rng(seed)
    out: List[Optional[int]] = [int(v) for v in rng.integers(0, 2**63, size=600, dtype=np.uint64) * 2 + 1]
    for base in list(out[:120]):
        for dist in range(max_distance + 2):  # d + 1 must stay apart
            out.append(flip(base, rng, dist))
    for base in list(out[120:160]):  # chains: each step within d, the ends further apart
        value = base
        for _ in range(4):
            value = flip(value, rng, max(1, max_distance))
            out.append(value)
    out += [0] * 150  # blank images: one identical hash
    out += [int(v) for v in rng.integers(0, 2**20, size=400)]  # dark: dense low bits
    out += [None] * 5  # undecodable files carry no hash
    order = rng.permutation(len(out))
    return [out[i] for i in order]


@pytest.mark.parametrize("max_distance", [0, 1, 2, 3, 5])
def test_groups_equal_the_all_pairs_search(max_distance):
    hashes = planted(max_distance, seed=max_distance)
    expected = all_pairs_components(hashes, max_distance)
    assert _perceptual_components(hashes, max_distance) == expected
    assert any(len(g) > 100 for g in expected)  # the blank copies (and, at d > 0, the dark ones) form big groups


@pytest.mark.parametrize("bucket_limit", [4, duplicates._BUCKET_LIMIT])
@pytest.mark.parametrize("max_distance", [0, 1, 2, 4])
def test_close_pairs_equal_all_pairs_on_distinct_hashes(max_distance, bucket_limit, monkeypatch):
    monkeypatch.setattr(duplicates, "_BUCKET_LIMIT", bucket_limit)  # 4: most buckets are searched again on their rest
    values = np.unique(np.array([h for h in planted(max_distance, seed=10 + max_distance) if h is not None], np.uint64))
    r, c = _close_pairs(values, max_distance)
    got = set(zip(r.tolist(), c.tolist()))
    assert len(got) == len(r)  # each pair once
    assert got == all_pairs(values, max_distance)
    assert bool(got) == (max_distance > 0)  # distinct hashes are never at distance 0; the near-copies are found


def test_keys_without_the_pigeonhole_would_miss_pairs(monkeypatch):
    """The comparison can fail: keyed on unions of m - d + 1 of the m bands (no pigeonhole: two codes at distance d
    may agree on only m - d bands), planted pairs are missed."""
    real = duplicates._band_keys
    monkeypatch.setattr(duplicates, "_band_keys", lambda bits, max_distance: real(bits, max(0, max_distance - 1)))
    hashes = planted(2, seed=3)
    assert _perceptual_components(hashes, 2) != all_pairs_components(hashes, 2)


def test_distance_d_plus_one_stays_apart_and_edge_cases():
    a = 0x0123_4567_89AB_CDEF
    near, far = a ^ 0b11, a ^ (0b111 << 8)  # distance 2 and 3 from a (5 from each other)
    assert _perceptual_components([a, near, far], 2) == [[0, 1]]
    assert _perceptual_components([a, far], 2) == []
    assert _perceptual_components([a, None, a], 0) == [[0, 2]]
    assert _perceptual_components([None, a], 2) == []
    assert _perceptual_components([a] * 3, 64) == [[0, 1, 2]]
    assert _perceptual_components([0, 2**64 - 1], 64) == [[0, 1]]
    r, c = _close_pairs(np.array([5], np.uint64), 2)
    assert r.size == c.size == 0
    with pytest.raises(ValueError, match=r"max_distance must be an int in \[0, 64\]"):
        _close_pairs(np.array([1, 2], np.uint64), -1)
    with pytest.raises(ValueError, match="max_distance"):
        _close_pairs(np.array([1, 2], np.uint64), 65)


def test_pathological_buckets_stay_fast():
    """20k copies of one blank hash and 20k distinct hashes that share their 40 high bits."""
    rng = np.random.default_rng(1)
    hashes = [0] * 20_000 + [int(v) for v in rng.integers(0, 2**24, size=20_000)]
    t = time.perf_counter()
    groups = _perceptual_components(hashes, 2)
    assert time.perf_counter() - t < 30  # all pairs would compare 8e8 pairs; this takes about a second
    assert groups[0][:3] == [0, 1, 2]
    values = np.unique(np.array(hashes[20_000:], np.uint64))[:3000]
    r, c = _close_pairs(values, 2)
    assert set(zip(r.tolist(), c.tolist())) == all_pairs(values, 2)

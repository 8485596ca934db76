"""Harrell's C in O(n log n) by scikit-survival's rules, for any integer weights (bootstrap resamples).

sksurv's ``concordance_index_censored`` loops over pairs, O(n^2): 18 s at 100,000 patients, and a 1,000-resample
paired bootstrap at 20,000 patients took minutes with the pairwise matrices. Here the comparable rows of every event
are a prefix of one time order, and the concordant weight a 2-D dominance sum over (time order, risk rank), done
with sorts, binary searches and cumulative sums (``benchmarks/concordance.md``). The values equal sksurv's exactly,
tied times and risks included (tests/test_metrics.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TIED_TOL = 1e-8  # sksurv's default: risks closer than this count as tied (score 0.5)
_BLOCK_BYTES = 64 * 2**20  # about the memory of the temporaries for one block of bootstrap resamples


def _comparable_prefix(t: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows in the order that makes every event's comparable rows a prefix.

    Returns ``order`` (n,): the rows by decreasing time, censored before events at equal times;
    ``events`` (n_events,): the event rows; ``count`` (n_events,): how many rows are comparable with
    each event (t_j > t_i, or t_j == t_i and j censored), which are exactly the first ``count`` rows
    of ``order``.
    """
    order = np.lexsort((e, -t))
    events = np.flatnonzero(e)
    t_event, t_censored = t[events], np.sort(t[~e])
    later = len(t) - np.searchsorted(np.sort(t), t_event, side="right")
    tied_censored = (np.searchsorted(t_censored, t_event, side="right")
                     - np.searchsorted(t_censored, t_event, side="left"))
    return order, events, later + tied_censored


def _first_rank(u: np.ndarray, x: np.ndarray, above: Callable[[np.ndarray], np.ndarray],
                guess: np.ndarray) -> np.ndarray:
    """For each x, the smallest k with ``above(u[k] - x)`` (len(u) if none), starting from ``guess``.

    ``u`` is sorted and ``above`` monotone, so ``above(u[k] - x)`` (float64 differences) is false,
    then true; the guess is moved one rank at a time until it sits on that boundary.
    """
    k, m = guess.copy(), len(u)
    while (down := (k > 0) & above(u[np.maximum(k - 1, 0)] - x)).any():
        k[down] -= 1
    while (up := (k < m) & ~above(u[np.minimum(k, m - 1)] - x)).any():
        k[up] += 1
    return k


def _tie_bounds(r: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense risk ranks (n,) and, per event, the rank bounds (lo, hi) (n_events,) of sksurv's scores.

    With u the sorted distinct risks and d = u_k - risk_i in float64 (sksurv computes the same
    difference), a row of rank k scores 1 against event i if d < -TIED_TOL, 0.5 if |d| <= TIED_TOL
    and 0 if d > TIED_TOL: exactly sksurv's pairwise rule, ties are not snapped to groups. Rounding
    is monotone, so d is non-decreasing in k and the three sets are the ranks [0, lo), [lo, hi) and
    [hi, m); a binary search on ``risk_i -/+ TIED_TOL`` finds lo and hi up to a few ulps, and
    :func:`_first_rank` puts them on the exact boundary of the float64 test.
    """
    u, rank = np.unique(r, return_inverse=True)
    x = r[events]
    lo = _first_rank(u, x, lambda d: d >= -TIED_TOL, np.searchsorted(u, x - TIED_TOL, side="left"))
    hi = _first_rank(u, x, lambda d: d > TIED_TOL, np.searchsorted(u, x + TIED_TOL, side="right"))
    return rank.reshape(-1), lo, hi


_Level = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _levels(order: np.ndarray, events: np.ndarray, count: np.ndarray, r: np.ndarray) -> list[_Level]:
    """The dominance-sum plan of one risk: the concordance numerator as block prefix sums.

    Event i scores against the first ``count_i`` rows of ``order`` (:func:`_comparable_prefix`):
    1 for each of rank < lo_i, 0.5 for each of lo_i <= rank < hi_i (:func:`_tie_bounds`), i.e.
    0.5 (D_i(lo_i) + D_i(hi_i)) with D_i(x) the weight of those rows with rank < x. The prefix
    [0, count_i) is the union of one aligned block of 2^k positions for each bit k set in count_i,
    block b = (count_i >> k) - 1. Level k sorts the rows by (position >> k, rank), so block b holds
    positions [b 2^k, (b + 1) 2^k) of that order, and the rows of rank < x in it are those up to a
    binary search for key b m + x. A level is (rows in its order, querying events, block starts,
    ends below lo, ends below hi), all fixed for every set of weights.
    """
    n = len(order)
    rank, lo, hi = _tie_bounds(r, events)
    m = np.int64(rank.max(initial=0) + 1)
    rank_in_order = rank[order].astype(np.int64)
    position = np.arange(n, dtype=np.int64)
    levels = []
    for k in range(n.bit_length()):
        key = (position >> k) * m + rank_in_order
        sort = np.argsort(key)
        keys = key[sort]
        query = np.flatnonzero((count >> k) & 1)
        block = (count[query] >> k) - 1
        levels.append((order[sort], events[query], block << k,
                       np.searchsorted(keys, block * m + lo[query]), np.searchsorted(keys, block * m + hi[query])))
    return levels


def _level_sum(wt: np.ndarray, level: _Level) -> np.ndarray:
    """Twice the numerator part (B,) of one level for integer weights ``wt`` (n, B): the sum over its
    events of w_i (D(lo) + D(hi) - 2 D(start)), D the cumulative weight in the level's order (int64)."""
    rows, query, start, end_lo, end_hi = level
    cum = np.zeros((len(rows) + 1, wt.shape[1]), dtype=wt.dtype)
    np.cumsum(wt[rows], axis=0, out=cum[1:])
    inner = (cum[end_lo] - cum[start]) + (cum[end_hi] - cum[start])
    return np.multiply(wt[query], inner, dtype=np.int64).sum(axis=0)


def weighted_c_parts(t: np.ndarray, e: np.ndarray, risks: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numerators (k, B) and denominators (B,) of Harrell's C on B resamples given as counts ``w`` (B, n).

    sksurv's rules, pair (i, j) with i an event: comparable if t_j > t_i, or t_j == t_i and j is
    censored; scores 1 if risk_i > risk_j, 0.5 if |risk_i - risk_j| <= TIED_TOL. Copies of one row
    (same time and event) are never comparable with each other, and A_ii = 0, so C on a resample is
    sum_ij w_i w_j A_ij S_ij / sum_ij w_i w_j A_ij over the original rows (two studies of one patient
    are two rows). The denominator is a prefix sum in time order (:func:`_comparable_prefix`), the
    numerator a 2-D dominance sum over (time order, risk rank) done level by level (:func:`_levels`):
    O(B n log n), blocked over resamples so that the temporaries stay near ``_BLOCK_BYTES``.
    The sums are taken in integers (twice the numerator), so they are exact.
    """
    n = len(t)
    order, events, count = _comparable_prefix(t, e)
    small = len(w) == 0 or w.sum(axis=1).max() < 2**30  # then cumulative weights and their sums fit int32
    dtype = np.int32 if small else np.int64
    step = max(1, _BLOCK_BYTES // (4 * (n + 1) * dtype().itemsize))
    blocks = [slice(start, start + step) for start in range(0, len(w), step)]

    def block_weights(b: slice) -> np.ndarray:
        return np.ascontiguousarray(w[b].T.astype(dtype))  # (n, resamples in block b)

    den = np.zeros(len(w))
    for b in blocks:
        wt = block_weights(b)
        cum = np.zeros((n + 1, wt.shape[1]), dtype=dtype)
        np.cumsum(wt[order], axis=0, out=cum[1:])
        den[b] = np.multiply(wt[events], cum[count], dtype=np.int64).sum(axis=0)
    num = np.zeros((len(risks), len(w)))
    for k, r in enumerate(risks):
        levels = _levels(order, events, count, r)  # one risk's plan at a time: O(n log n) memory
        for b in blocks:
            wt = block_weights(b)
            num[k, b] = 0.5 * sum((_level_sum(wt, level) for level in levels), np.zeros(wt.shape[1], dtype=np.int64))
    return num, den

"""Compiled inner loops of the LOPQ search (numba): cell selection, local frames, scan.

Per query, work is proportional to the cells and candidates it visits, and the
loops are too fine-grained for numpy (a cell holds a few vectors). The search
runs in four steps over a batch of queries:

1. :func:`select_cells`: the cells of each query's multi-sequence traversal;
2. :func:`assign_frames`: the (query, centroid) pairs whose local frame the scan
   needs, grouped by centroid so that each ``d/2 x d/2`` rotation is read once per
   batch rather than once per query (the rotations of a 256-centroid half of
   128-d vectors are 4 MiB);
3. the rotations themselves (:func:`sized_kernels` ``.rotate``, or one matrix
   product per centroid in ``lopq.py`` for halves wider than
   ``lopq_simd.MAX_ROTATED_DIM``), written query by query so that a query's
   frames sit together while it is scanned;
4. :func:`sized_kernels` ``.scan``: asymmetric distances and the shortlist.

Steps 3 and 4 are compiled once per vector size (the sizes are constants of the
generated code, see ``lopq_simd``). Everything is compiled on first use and cached
next to this file (``cache=True``); the arrays' dtypes are fixed by the callers so
one compilation serves all calls. Hot loops neither allocate nor rebind arrays:
numba counts references to a rebound array at every use.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple

import numba
import numpy as np

from .lopq_simd import MAX_ROTATED_DIM, residual_distance, rotate_pair

# fast-math without "no NaN / no inf": the scan's heaps start at +inf
_JIT = {"nogil": True, "cache": True, "fastmath": {"reassoc", "contract", "arcp", "nsz"}}
_BISECTIONS = 8  # threshold refinements over the cells found before the last few are sorted
_COUNT_BISECTIONS = 4  # refinements of a threshold aiming at a number of cells
_FIRST_AIM = 0.75  # first staircase: this share of the cells the budget needs at the average density
_GROWTH_AIM = 1.1  # later staircases: this multiple of the cells needed at the density seen so far


@numba.njit(**_JIT)
def _columns_within(row_score, s2, threshold, guess):
    """Number of columns ``b`` with ``row_score + s2[b] <= threshold``, walked from
    ``guess``. The sum is evaluated exactly as the enumeration evaluates it, so
    counts and enumerations agree even where rounding decides."""
    b = guess
    while b < len(s2) and row_score + s2[b] <= threshold:
        b += 1
    while b > 0 and row_score + s2[b - 1] > threshold:
        b -= 1
    return b


@numba.njit(**_JIT)
def _cells_below(s1, s2, threshold):
    """Number of cells ``(a, b)`` with ``s1[a] + s2[b] <= threshold`` (both sorted):
    a row's column count only falls as ``a`` grows, so one pointer walks it down."""
    count = 0
    b = np.searchsorted(s2, threshold - s1[0], side="right")
    for a in range(len(s1)):
        b = _columns_within(s1[a], s2, threshold, b)
        if b == 0:
            break
        count += b
    return count


@numba.njit(**_JIT)
def _threshold_holding(s1, s2, low, low_cells, wanted_cells):
    """A threshold above ``low`` (whose staircase holds ``low_cells`` cells) whose
    staircase holds about ``wanted_cells`` cells, and always at least one more.

    The square of the ``r = ceil(sqrt(wanted))`` nearest centroids of each half
    scores at most ``s1[r-1] + s2[r-1]``, so that threshold holds enough; it is
    bisected towards ``low`` on the cell count.
    """
    coarse_k = len(s1)
    side = min(int(np.ceil(np.sqrt(max(wanted_cells, 1.0)))), coarse_k) - 1
    high = max(s1[side] + s2[side], low)
    high_cells = _cells_below(s1, s2, high)
    for _ in range(_COUNT_BISECTIONS):
        middle = 0.5 * (low + high)
        cells = _cells_below(s1, s2, middle)
        if cells >= wanted_cells:
            high, high_cells = middle, cells
        else:
            low = middle
    if high_cells > low_cells:
        return high
    next_score = np.inf  # no progress: the smallest score beyond each row's staircase
    for a in range(coarse_k):
        if s1[a] + s2[0] >= next_score:
            break
        b = _columns_within(s1[a], s2, high, np.searchsorted(s2, high - s1[a], side="right"))
        if b < coarse_k:
            next_score = min(next_score, s1[a] + s2[b])
    return next_score


@numba.njit(**_JIT)
def _select_cells_within(dists1, dists2, order1, order2, cell_sizes, budget, ranks1, ranks2, capacity):
    """The cells of each query's multi-sequence traversal, up to ``budget`` vectors.

    ``dists1``/``dists2`` (``[nq, K]``) are the distances of a query's halves to
    the centroids of each half and ``order1``/``order2`` the centroids by
    increasing distance; cell ``i * K + j`` holds ``cell_sizes[i*K+j]`` vectors.
    With ``sorted1[a] = dists1[order1[a]]`` (likewise for half 2), the
    multi-sequence algorithm (Babenko & Lempitsky) visits cells by non-decreasing
    score ``sorted1[a] + sorted2[b]``; the non-empty ones are taken until they hold
    at least ``budget`` vectors.

    The same set is found without its priority queue, whose unpredictable
    branches cost more than the rest of a search: the cells scoring at most a
    threshold form a staircase in the grid of ranks (row ``a`` holds the columns
    ``b`` with ``sorted2[b] <= t - sorted1[a]``). The staircase is grown row by
    row until it holds the budget, the threshold is then bisected over the cells
    found, and only the few cells in the last interval are sorted.

    Writes the ranks ``(a, b)`` of the cells taken (in no particular order) to
    ``ranks1``/``ranks2`` (``[nq, >= min(budget, K*K)]``) and returns the number
    of cells taken per query, or -1 for a query whose staircase outgrew room for
    ``capacity`` cells (see :func:`select_cells`).
    """
    n_queries, coarse_k = dists1.shape
    taken = np.zeros(n_queries, np.int64)
    average_size = max(cell_sizes.sum() / cell_sizes.size, 1e-9)
    capacity = min(capacity, coarse_k * coarse_k)
    s1 = np.empty(coarse_k, np.float32)  # a query's distances in increasing order
    s2 = np.empty(coarse_k, np.float32)
    found_scores = np.empty(capacity, np.float32)  # non-empty cells of the staircase
    found_sizes = np.empty(capacity, np.int64)
    found_rows = np.empty(capacity, np.int64)
    found_columns = np.empty(capacity, np.int64)
    band = np.empty(capacity, np.int64)  # the cells whose score decides, see below
    row_ends = np.empty(coarse_k, np.int64)  # columns of each row enumerated so far
    for q in range(n_queries):
        o1, o2 = order1[q], order2[q]
        for r in range(coarse_k):
            s1[r], s2[r] = dists1[q, o1[r]], dists2[q, o2[r]]
        row_ends[:] = 0
        found, collected, enumerated = 0, 0, 0
        lowest = s1[0] + s2[0]
        below = -np.inf  # a threshold known to hold fewer than ``budget`` vectors
        # aim at the cells the budget needs at the average density (cells near a query are denser)
        threshold = _threshold_holding(s1, s2, lowest, 0, _FIRST_AIM * budget / average_size)
        overflow = False
        while True:
            for a in range(coarse_k):
                if s1[a] + s2[0] > threshold:
                    break
                b = row_ends[a]
                if found + coarse_k - b > capacity:  # no room for the rest of the row
                    overflow = True
                    break
                row_cells = o1[a] * coarse_k
                while b < coarse_k and s1[a] + s2[b] <= threshold:
                    # written whether empty or not, kept only if not: no branch to mispredict
                    vectors = cell_sizes[row_cells + o2[b]]
                    found_scores[found], found_sizes[found] = s1[a] + s2[b], vectors
                    found_rows[found], found_columns[found] = a, b
                    found += vectors > 0
                    collected += vectors
                    b += 1
                enumerated += b - row_ends[a]
                row_ends[a] = b
            if overflow or collected >= budget or enumerated == coarse_k * coarse_k:
                break
            below = threshold
            # the cells the budget needs at the density seen so far, a little more
            growth = min(max(_GROWTH_AIM * budget / collected if collected else 4.0, 1.2), 16.0)
            threshold = _threshold_holding(s1, s2, threshold, enumerated, growth * enumerated)
        if overflow:
            taken[q] = -1
            continue
        # bisect (below, threshold] towards the smallest threshold holding the budget
        above = threshold
        if collected >= budget:
            for _ in range(_BISECTIONS):
                middle = 0.5 * (below + above) if below > -np.inf else lowest
                held = 0
                for f in range(found):
                    if found_scores[f] <= middle:
                        held += found_sizes[f]
                if held >= budget:
                    above = middle
                else:
                    below = middle
        count, collected = 0, 0
        band_size = 0  # the cells in (below, above], taken by score
        for f in range(found):
            if found_scores[f] <= below:
                a, b = found_rows[f], found_columns[f]
                ranks1[q, count], ranks2[q, count] = a, b
                count += 1
                collected += found_sizes[f]
            elif found_scores[f] <= above:
                band[band_size] = f
                band_size += 1
        by_score = np.argsort(found_scores[band[:band_size]], kind="mergesort")
        for f in band[:band_size][by_score]:
            if collected >= budget:
                break
            a, b = found_rows[f], found_columns[f]
            ranks1[q, count], ranks2[q, count] = a, b
            count += 1
            collected += found_sizes[f]
        taken[q] = count
    return taken


def select_cells(dists1, dists2, order1, order2, cell_sizes, budget):
    """The cells of each query's multi-sequence traversal, up to ``budget`` vectors
    (see :func:`_select_cells_within`): ``(ranks1, ranks2, taken)``, query ``q``
    taking the cells of ranks ``(ranks1[q, t], ranks2[q, t])`` for ``t < taken[q]``.

    The kernel's room for the cells of a staircase is sized from the average cell
    density, which is ample unless the cells near a query are far denser than the
    average; such a query is run again with room for every cell.
    """
    n_queries, coarse_k = dists1.shape
    n_cells = coarse_k * coarse_k
    ranks1, ranks2 = (np.empty((n_queries, min(budget, n_cells)), np.int64) for _ in range(2))
    average_size = max(cell_sizes.sum() / n_cells, 1e-9)
    room = 4 * int(budget / average_size) + 4 * coarse_k
    taken = _select_cells_within(dists1, dists2, order1, order2, cell_sizes, budget, ranks1, ranks2, room)
    crowded = np.flatnonzero(taken < 0)
    if len(crowded):
        again1, again2 = (np.empty((len(crowded), ranks1.shape[1]), np.int64) for _ in range(2))
        inputs = (x[crowded] for x in (dists1, dists2, order1, order2))
        taken[crowded] = _select_cells_within(*inputs, cell_sizes, budget, again1, again2, n_cells)
        ranks1[crowded], ranks2[crowded] = again1, again2
    return ranks1, ranks2, taken


@numba.njit(**_JIT)
def assign_frames(order, ranks, taken, coarse_k):
    """The (query, centroid) pairs the scan needs for one half: a row of the frames
    array for each, numbered query by query, and the pairs grouped by centroid.

    Query ``q`` needs its ``r``-th nearest centroid ``order[q, r]`` for each rank
    ``r`` among ``ranks[q, :taken[q]]``. Returns ``(rows, bounds, pair_queries,
    pair_rows)``: ``rows[q, r]`` is the frame row of pair ``(q, r)`` (-1 where not
    needed), and the pairs of centroid ``c`` are ``pair_queries[i]`` /
    ``pair_rows[i]`` for ``i`` in ``bounds[c]:bounds[c+1]``.
    """
    n_queries, n_ranks = order.shape
    rows = np.full((n_queries, n_ranks), -1, np.int64)
    bounds = np.zeros(coarse_k + 1, np.int64)
    n_rows = 0
    for q in range(n_queries):
        for t in range(taken[q]):
            r = ranks[q, t]
            if rows[q, r] < 0:
                rows[q, r] = n_rows
                n_rows += 1
                bounds[order[q, r] + 1] += 1
    for c in range(coarse_k):
        bounds[c + 1] += bounds[c]
    filled = bounds[:-1].copy()
    pair_queries = np.empty(n_rows, np.int64)
    pair_rows = np.empty(n_rows, np.int64)
    for q in range(n_queries):
        for r in range(n_ranks):
            if rows[q, r] >= 0:
                slot = filled[order[q, r]]
                pair_queries[slot], pair_rows[slot] = q, rows[q, r]
                filled[order[q, r]] += 1
    return rows, bounds, pair_queries, pair_rows


class SizedKernels(NamedTuple):
    """Kernels compiled for one shape of index (see :func:`sized_kernels`)."""

    rotate: Callable | None  # None: halves too wide for the unrolled rotation, use BLAS
    scan: Callable


@lru_cache(maxsize=None)
def sized_kernels(half_m: int, sub_dim: int, half_dim: int) -> SizedKernels:
    """The rotation and scan kernels for ``half_m`` subquantizers of ``sub_dim``
    dimensions per half of ``half_dim``: the sizes are constants of the compiled
    code (numba caches one compilation per set of sizes)."""

    @numba.njit(**_JIT)
    def rotate(halves, rotations, shifts, bounds, pair_queries, pair_rows, n_rows):
        """``frames[pair_rows[i]] = halves[pair_queries[i]] @ rotations[c] - shifts[c]``
        for the pairs ``i`` of every centroid ``c``; returns ``frames``."""
        frames = np.empty((n_rows, half_dim), np.float32)
        for c in range(len(bounds) - 1):
            stop = bounds[c + 1]
            for i in range(bounds[c], stop, 2):
                j = min(i + 1, stop - 1)  # an odd last pair is rotated twice
                rotate_pair(halves, pair_queries[i], pair_queries[j], rotations, c, shifts,
                            frames, pair_rows[i], pair_rows[j], half_dim)
        return frames

    @numba.njit(**_JIT)
    def scan(order1, order2, ranks1, ranks2, taken, frames1, rows1, frames2, rows2, cell_bounds, codes,
             codewords1, codewords2, shortlist):
        """Asymmetric distances of each query to the vectors of its cells, and the
        ``shortlist`` smallest with their database positions (sorted; ``inf``/-1 padding).

        A candidate's distance is, per half, the squared distance between the
        query's residual in the cell centroid's local frame (``frames1[rows1[q, a]]``
        for the query's ``a``-th nearest centroid of half 1, see
        :func:`assign_frames`) and the candidate's residual as decoded from its
        codes (``codewords1[s * k + c]`` is codeword ``c`` of subquantizer ``s``),
        summed over both halves. Decoding costs ``d`` reads per candidate against
        ``m`` for lookup tables, but a table per (query, centroid) costs
        ``k * d/2`` to build and serves a few candidates here. A query's
        candidates are first listed, then scored in one flat loop: short loops
        over the few vectors of each cell would stall on every exit.
        """
        n_queries = len(taken)
        coarse_k = order1.shape[1]
        most = 1
        for q in range(n_queries):
            held = 0
            for t in range(taken[q]):
                cell = order1[q, ranks1[q, t]] * coarse_k + order2[q, ranks2[q, t]]
                held += cell_bounds[cell + 1] - cell_bounds[cell]
            most = max(most, held)
        positions_of = np.empty(most, np.int64)
        frame_rows1 = np.empty(most, np.int64)
        frame_rows2 = np.empty(most, np.int64)
        distances = np.empty(most, np.float32)
        heap = np.empty(shortlist, np.float32)  # max-heap of the best so far
        heap_positions = np.empty(shortlist, np.int64)
        best = np.empty((n_queries, shortlist), np.float32)
        positions = np.empty((n_queries, shortlist), np.int64)
        for q in range(n_queries):
            n = 0
            for t in range(taken[q]):
                a, b = ranks1[q, t], ranks2[q, t]
                row1, row2 = rows1[q, a], rows2[q, b]
                cell = order1[q, a] * coarse_k + order2[q, b]
                for position in range(cell_bounds[cell], cell_bounds[cell + 1]):
                    positions_of[n], frame_rows1[n], frame_rows2[n] = position, row1, row2
                    n += 1
            for i in range(n):
                distances[i] = residual_distance(
                    frames1, frame_rows1[i], codes, positions_of[i], 0, codewords1, half_m, sub_dim
                ) + residual_distance(frames2, frame_rows2[i], codes, positions_of[i], half_m, codewords2, half_m, sub_dim)
            heap[:] = np.inf
            heap_positions[:] = -1
            for i in range(n):
                if distances[i] < heap[0]:
                    heap[0], heap_positions[0] = distances[i], positions_of[i]
                    _sift_down_max(heap, heap_positions, shortlist)
            order = np.argsort(heap)
            for j in range(shortlist):
                best[q, j], positions[q, j] = heap[order[j]], heap_positions[order[j]]
        return best, positions

    return SizedKernels(rotate if half_dim <= MAX_ROTATED_DIM else None, scan)


@numba.njit(**_JIT)
def _sift_down_max(values, payload, size):
    """Restore the max-heap after its root was replaced."""
    slot = 0
    while True:
        child = 2 * slot + 1
        if child >= size:
            return
        if child + 1 < size and values[child + 1] > values[child]:
            child += 1
        if values[child] <= values[slot]:
            return
        values[slot], values[child] = values[child], values[slot]
        payload[slot], payload[child] = payload[child], payload[slot]
        slot = child

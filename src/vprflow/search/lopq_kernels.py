"""Compiled inner loops of the LOPQ search (numba): cell selection, grouping, scan.

Per query, work is proportional to the cells and candidates it visits, and the
loops are too fine-grained for numpy (a cell holds a few vectors). The kernels
split at the one step that must see the whole batch: rotating query halves into
the centroids' local frames, done in ``lopq.py`` as one matrix product per
centroid over the queries that need it (:func:`group_by_centroid` gathers
them), so each ``d/2 x d/2`` rotation is read once per batch rather than once
per query (the rotations of a 256-centroid half of 128-d vectors are 4 MiB).

Compiled on first use and cached next to this file (``cache=True``); the
arrays' dtypes are fixed by the callers so one compilation serves all calls.
"""

from __future__ import annotations

import numba
import numpy as np

# fast-math without "no NaN / no inf": the scan's heaps start at +inf
_JIT = {"nogil": True, "cache": True, "fastmath": {"reassoc", "contract", "arcp", "nsz"}}
_BISECTIONS = 8  # threshold refinements over the cells found before the last few are sorted
_COUNT_BISECTIONS = 6  # refinements of a threshold aiming at a number of cells
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
def _grown(values, size):
    grown = np.empty(size, values.dtype)
    grown[: len(values)] = values
    return grown


@numba.njit(**_JIT)
def select_cells(sorted1, sorted2, order1, order2, cell_sizes, budget, ranks1, ranks2):
    """The cells of each query's multi-sequence traversal, up to ``budget`` vectors.

    ``sorted1``/``sorted2`` (``[nq, K]``) are the distances of a query's halves
    to the centroids of each half in increasing order and ``order1``/``order2``
    the centroids in that order; cell ``i * K + j`` holds ``cell_sizes[i*K+j]``
    vectors. The multi-sequence algorithm (Babenko & Lempitsky) visits cells by
    non-decreasing score ``sorted1[a] + sorted2[b]``; the non-empty ones are taken
    until they hold at least ``budget`` vectors.

    The same set is found without its priority queue, whose unpredictable
    branches cost more than the rest of a search: the cells scoring at most a
    threshold form a staircase in the grid of ranks (row ``a`` holds the columns
    ``b`` with ``sorted2[b] <= t - sorted1[a]``). The staircase is grown row by
    row until it holds the budget, the threshold is then bisected over the cells
    found, and only the few cells in the last interval are sorted.

    Writes the ranks ``(a, b)`` of the cells taken (in no particular order) to
    ``ranks1``/``ranks2`` (``[nq, >= min(budget, K*K)]``) and returns the number
    of cells taken per query.
    """
    n_queries, coarse_k = sorted1.shape
    taken = np.zeros(n_queries, np.int64)
    average_size = max(cell_sizes.sum() / cell_sizes.size, 1e-9)
    capacity = min(coarse_k * coarse_k, 4 * int(budget / average_size) + 4 * coarse_k)
    found_scores = np.empty(capacity, np.float32)  # non-empty cells of the staircase
    found_sizes = np.empty(capacity, np.int64)
    found_rows = np.empty(capacity, np.int64)
    found_columns = np.empty(capacity, np.int64)
    row_ends = np.empty(coarse_k, np.int64)  # columns of each row enumerated so far
    for q in range(n_queries):
        s1, s2, o1, o2 = sorted1[q], sorted2[q], order1[q], order2[q]
        row_ends[:] = 0
        found, collected, enumerated = 0, 0, 0
        lowest = s1[0] + s2[0]
        below = -np.inf  # a threshold known to hold fewer than ``budget`` vectors
        # aim at the cells the budget needs at the average density (cells near a query are denser)
        threshold = _threshold_holding(s1, s2, lowest, 0, _FIRST_AIM * budget / average_size)
        while True:
            for a in range(coarse_k):
                if s1[a] + s2[0] > threshold:
                    break
                b = row_ends[a]
                if found + coarse_k - b > len(found_scores):  # room for the rest of the row
                    size = min(2 * len(found_scores) + coarse_k, coarse_k * coarse_k)
                    found_scores = _grown(found_scores, size)
                    found_sizes = _grown(found_sizes, size)
                    found_rows = _grown(found_rows, size)
                    found_columns = _grown(found_columns, size)
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
            if collected >= budget or enumerated == coarse_k * coarse_k:
                break
            below = threshold
            # the cells the budget needs at the density seen so far, a little more
            growth = min(max(_GROWTH_AIM * budget / collected if collected else 4.0, 1.2), 16.0)
            threshold = _threshold_holding(s1, s2, threshold, enumerated, growth * enumerated)
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
        band = np.empty(found, np.int64)  # the cells in (below, above], taken by score
        band_size = 0
        for f in range(found):
            if found_scores[f] <= below:
                a, b = found_rows[f], found_columns[f]
                ranks1[q, count], ranks2[q, count] = a, b
                count += 1
                collected += found_sizes[f]
            elif found_scores[f] <= above:
                band[band_size] = f
                band_size += 1
        band = band[:band_size]
        band = band[np.argsort(found_scores[band], kind="mergesort")]
        for f in band:
            if collected >= budget:
                break
            a, b = found_rows[f], found_columns[f]
            ranks1[q, count], ranks2[q, count] = a, b
            count += 1
            collected += found_sizes[f]
        taken[q] = count
    return taken


@numba.njit(**_JIT)
def group_by_centroid(halves, order, ranks, taken, coarse_k):
    """The (query, centroid) pairs the scan needs for one half, grouped by centroid.

    Query ``q`` needs its ``r``-th nearest centroid ``order[q, r]`` for each rank
    ``r`` among ``ranks[q, :taken[q]]``. Returns ``(gathered, bounds, rows)``:
    ``gathered`` holds the query half of every pair, the pairs of centroid ``c``
    in rows ``bounds[c]:bounds[c+1]``, and ``rows[q, r]`` is the row of pair
    ``(q, r)`` (-1 where not needed).
    """
    n_queries, dim = halves.shape
    rows = np.full(order.shape, -1, np.int64)
    bounds = np.zeros(coarse_k + 1, np.int64)
    for q in range(n_queries):
        for t in range(taken[q]):
            r = ranks[q, t]
            if rows[q, r] < 0:
                rows[q, r] = 0
                bounds[order[q, r] + 1] += 1
    for c in range(coarse_k):
        bounds[c + 1] += bounds[c]
    filled = bounds[:-1].copy()
    gathered = np.empty((bounds[coarse_k], dim), np.float32)
    for q in range(n_queries):
        for r in range(order.shape[1]):
            if rows[q, r] == 0:
                c = order[q, r]
                row = filled[c]
                rows[q, r] = row
                filled[c] += 1
                for i in range(dim):
                    gathered[row, i] = halves[q, i]
    return gathered, bounds, rows


@numba.njit(inline="always", **_JIT)
def _half_distance(local, codes, position, first_column, codewords, sub_dim, subquantizer_k):
    """Squared distance between ``local`` and the residual decoded from the codes
    ``codes[position, first_column:]`` of one half (``codewords[s * subquantizer_k + c]``
    is codeword ``c`` of subquantizer ``s``)."""
    distance = np.float32(0.0)
    for s in range(len(local) // sub_dim):
        row = s * subquantizer_k + codes[position, first_column + s]
        partial = np.float32(0.0)  # one sum per subspace: independent chains
        for i in range(sub_dim):
            difference = local[s * sub_dim + i] - codewords[row, i]
            partial += difference * difference
        distance += partial
    return distance


@numba.njit(**_JIT)
def scan(order1, order2, ranks1, ranks2, taken, frames1, frames2, cell_bounds, codes, codewords, shortlist):
    """Asymmetric distances of each query to the vectors of its cells, and the
    ``shortlist`` smallest with their database positions (sorted; ``inf``/-1 padding).

    A candidate's distance is, per half, the squared distance between the query's
    residual in the cell centroid's local frame and the candidate's residual as
    decoded from its codes, summed over both halves. Decoding costs ``d`` reads
    per candidate against ``m`` for lookup tables, but a table per (query,
    centroid) costs ``256 * d/2`` to build and serves a few candidates here.

    ``frames1``/``frames2`` are ``(residuals, rows)``: the residual of query ``q``
    for its ``r``-th nearest centroid is ``residuals[rows[q, r]]`` (see
    :func:`group_by_centroid`). ``codewords[h, s * k + c]`` is codeword ``c`` of
    subquantizer ``s`` of half ``h``. A candidate's second half is skipped when
    its first half alone puts it beyond the shortlist (partial distance
    elimination).
    """
    n_queries = len(taken)
    coarse_k = order1.shape[1]
    residuals1, rows1 = frames1
    residuals2, rows2 = frames2
    half_m = codes.shape[1] // 2
    sub_dim = residuals1.shape[1] // half_m
    subquantizer_k = codewords.shape[1] // half_m
    codewords1, codewords2 = codewords[0], codewords[1]
    best = np.full((n_queries, shortlist), np.inf, np.float32)
    positions = np.full((n_queries, shortlist), -1, np.int64)
    for q in range(n_queries):
        heap, heap_positions = best[q], positions[q]  # max-heap of the best so far
        for t in range(taken[q]):
            a, b = ranks1[q, t], ranks2[q, t]
            local1, local2 = residuals1[rows1[q, a]], residuals2[rows2[q, b]]
            cell = order1[q, a] * coarse_k + order2[q, b]
            for position in range(cell_bounds[cell], cell_bounds[cell + 1]):
                distance = _half_distance(local1, codes, position, 0, codewords1, sub_dim, subquantizer_k)
                if distance >= heap[0]:
                    continue  # half 1 alone puts it beyond the shortlist
                distance += _half_distance(local2, codes, position, half_m, codewords2, sub_dim, subquantizer_k)
                if distance < heap[0]:
                    heap[0], heap_positions[0] = distance, position
                    _sift_down_max(heap, heap_positions, shortlist)
        order = np.argsort(heap)
        best[q] = heap[order]
        positions[q] = heap_positions[order]
    return best, positions


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

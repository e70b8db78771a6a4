"""Compiled inner loops of the LOPQ search (numba): cell selection, local frames, scan.

Per query, work is proportional to the cells and candidates it visits, and the
loops are too fine-grained for numpy (a cell holds a few vectors). The search
runs in four steps over a batch of queries:

0. :func:`sorted_centroids`: each query half's centroids by distance;
1. :func:`select_cells`: the cells of each query's multi-sequence traversal;
2. :func:`assign_frames`: the (query, centroid) pairs whose local frame the scan
   needs, grouped by centroid so that each ``d/2 x d/2`` rotation is read once per
   batch rather than once per query (the rotations of a 256-centroid half of
   128-d vectors are 4 MiB);
3. the rotations themselves (:func:`sized_kernels` ``.rotate``, or one matrix
   product per centroid in ``lopq.py`` for halves wider than
   ``simd.MAX_ROTATED_DIM``), written query by query so that a query's
   frames sit together while it is scanned;
4. :func:`sized_kernels` ``.scan``: asymmetric distances and the shortlist.

Steps 3 and 4 are compiled once per vector size (the sizes are constants of the
generated code, see ``simd``). Everything is compiled on first use and cached
next to this file (``cache=True``); the arrays' dtypes are fixed by the callers so
one compilation serves all calls. Hot loops neither allocate nor rebind arrays:
numba counts references to a rebound array at every use. Nor do batches: the
working arrays of a batch come from :class:`Scratch`, since a fresh multi-megabyte
array costs a page fault per 4 KiB the first time it is written (on a virtual
machine, faults cost more than the rest of a small search).
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache
from typing import Callable, NamedTuple

import numba
import numpy as np

from .simd import MAX_ROTATED_DIM, any_nearer, residual_distance, rotate_block

# fast-math without "no NaN / no inf": the scan's heaps start at +inf
_JIT = {"nogil": True, "cache": True, "fastmath": {"reassoc", "contract", "arcp", "nsz"}}
_BISECTIONS = 8  # threshold refinements over the cells found before the last few are sorted
_COUNT_BISECTIONS = 3  # refinements of a threshold aiming at a number of cells
_FIRST_AIM = 0.75  # first staircase: this share of the cells the budget needs at the average density
_GROWTH_AIM = 1.1  # later staircases: this multiple of the cells needed at the density seen so far
_ROTATION_BLOCK = 4  # query halves rotated together: 1.3x the speed of 2 at 64-d, no faster at 6


class Scratch(threading.local):
    """Working arrays reused from batch to batch, one set per thread.

    ``array(name, shape, dtype)`` returns a view of a kept buffer, grown when a
    larger one is asked for; it is overwritten by the next call for the same name,
    so nothing returned to callers may live in it. The buffers hold about one
    batch's working set (``lopq._BATCH_BYTES``) until the thread ends.
    """

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != np.dtype(dtype):
            buffer = np.empty(max(size, 1), dtype)
            self._buffers[name] = buffer
        return buffer[:size].reshape(shape)


SCRATCH = Scratch()


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


_INDEX_MASK = np.uint64(0xFFFFFFFF)


@numba.njit(**_JIT)
def _keys(dists, keys):
    """Fill ``keys`` (``[nq, K]`` uint64) to sort like ``dists`` (float bits above, column below)."""
    n_queries, coarse_k = dists.shape
    bits = dists.view(np.uint32)
    for q in range(n_queries):
        for c in range(coarse_k):
            # non-negative float32 bit patterns order as the floats do; -0.0 and the
            # tiny negatives of rounding count as 0
            above = np.uint64(bits[q, c]) if dists[q, c] > 0 else np.uint64(0)
            keys[q, c] = (above << np.uint64(32)) | np.uint64(c)


def sorted_centroids(dists: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """Each row's centroids by increasing distance, as uint64 keys (written to
    ``keys`` when given): ``key >> 32`` the float32 bits of the distance (at least
    0), ``key & 0xFFFFFFFF`` the centroid. numpy sorts 64-bit integers with vector
    instructions: twice as fast as argsort."""
    dists = np.ascontiguousarray(dists, dtype=np.float32)
    if keys is None:
        keys = np.empty(dists.shape, np.uint64)
    _keys(dists, keys)
    keys.sort(axis=1)
    return keys


@numba.njit(inline="always", **_JIT)
def _centroid(key):
    return np.int64(key & _INDEX_MASK)


@numba.njit(**_JIT)
def _select_cells_within(keys1, keys2, cell_sizes, budget, ranks1, ranks2, cells, found_scores, found_sizes,
                         found_rows, found_columns, band):
    """The cells of each query's multi-sequence traversal, up to ``budget`` vectors.

    ``keys1``/``keys2`` (``[nq, K]``, see :func:`sorted_centroids`) are each query
    half's centroids by increasing distance, ``sorted1[a]`` the distance to the
    ``a``-th nearest (likewise for half 2); cell ``i * K + j`` holds
    ``cell_sizes[i*K+j]`` vectors. The multi-sequence algorithm (Babenko &
    Lempitsky) visits cells by non-decreasing score ``sorted1[a] + sorted2[b]``;
    the non-empty ones are taken until they hold at least ``budget`` vectors.

    The same set is found without its priority queue, whose unpredictable
    branches cost more than the rest of a search: the cells scoring at most a
    threshold form a staircase in the grid of ranks (row ``a`` holds the columns
    ``b`` with ``sorted2[b] <= t - sorted1[a]``). The staircase is grown row by
    row until it holds the budget, the threshold is then bisected over the cells
    found, and only the few cells in the last interval are sorted.

    Writes the ranks ``(a, b)`` of the cells taken (in no particular order) to
    ``ranks1``/``ranks2`` and the cells themselves to ``cells`` (all ``[nq, >=
    min(budget, K*K)]``) and returns the number of cells taken per query, or -1
    for a query whose staircase outgrew room for ``capacity`` cells, the length
    of the ``found_*`` and ``band`` work arrays (see :func:`select_cells`).
    """
    n_queries, coarse_k = keys1.shape
    taken = np.zeros(n_queries, np.int64)
    average_size = max(cell_sizes.sum() / cell_sizes.size, 1e-9)
    capacity = len(found_scores)
    bits1 = np.empty(coarse_k, np.uint32)  # a query's distances in increasing order
    bits2 = np.empty(coarse_k, np.uint32)
    s1, s2 = bits1.view(np.float32), bits2.view(np.float32)
    o1 = np.empty(coarse_k, np.int64)  # and the centroids at those distances
    o2 = np.empty(coarse_k, np.int64)
    # found_*: the non-empty cells of the staircase; band: the cells whose score decides
    row_ends = np.empty(coarse_k, np.int64)  # columns of each row enumerated so far
    for q in range(n_queries):
        for r in range(coarse_k):
            bits1[r], bits2[r] = np.uint32(keys1[q, r] >> np.uint64(32)), np.uint32(keys2[q, r] >> np.uint64(32))
            o1[r], o2[r] = _centroid(keys1[q, r]), _centroid(keys2[q, r])
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
                cells[q, count] = o1[a] * coarse_k + o2[b]
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
            cells[q, count] = o1[a] * coarse_k + o2[b]
            count += 1
            collected += found_sizes[f]
        taken[q] = count
    return taken


def select_cells(keys1, keys2, cell_sizes, budget, scratch: Scratch = SCRATCH):
    """The cells of each query's multi-sequence traversal, up to ``budget`` vectors
    (see :func:`_select_cells_within`): ``(ranks1, ranks2, cells, taken)``, query
    ``q`` taking cell ``cells[q, t]``, of ranks ``(ranks1[q, t], ranks2[q, t])``, for
    ``t < taken[q]``; the arrays live in ``scratch``.

    The kernel's room for the cells of a staircase is sized from the average cell
    density, which is ample unless the cells near a query are far denser than the
    average; such a query is run again with room for every cell.
    """
    n_queries, coarse_k = keys1.shape
    n_cells = coarse_k * coarse_k
    shape = (n_queries, min(budget, n_cells))
    ranks1, ranks2, cells = (scratch.array(name, shape, np.int64) for name in ("ranks1", "ranks2", "cells"))
    average_size = max(cell_sizes.sum() / n_cells, 1e-9)
    room = min(4 * int(budget / average_size) + 4 * coarse_k, n_cells)
    work = _selection_work(room, lambda name, size, dtype: scratch.array(name, (size,), dtype))
    taken = _select_cells_within(keys1, keys2, cell_sizes, budget, ranks1, ranks2, cells, *work)
    crowded = np.flatnonzero(taken < 0)
    if len(crowded):
        again = [np.empty((len(crowded), shape[1]), np.int64) for _ in range(3)]
        work = _selection_work(n_cells, lambda name, size, dtype: np.empty(size, dtype))
        taken[crowded] = _select_cells_within(keys1[crowded], keys2[crowded], cell_sizes, budget, *again, *work)
        ranks1[crowded], ranks2[crowded], cells[crowded] = again
    return ranks1, ranks2, cells, taken


def _selection_work(room, make):
    """The work arrays of :func:`_select_cells_within` for ``room`` cells."""
    return (make("found_scores", room, np.float32), make("found_sizes", room, np.int64),
            make("found_rows", room, np.int64), make("found_columns", room, np.int64),
            make("band", room, np.int64))


@numba.njit(**_JIT)
def _assign_frames(keys, ranks, taken, coarse_k, cell_rows, centroid_of, query_of, pair_queries, pair_rows):
    """See :func:`assign_frames`; fills ``cell_rows`` and the four per-row arrays
    (room for ``taken.sum()`` rows each) and returns ``(bounds, n_rows)``."""
    n_ranks = keys.shape[1]
    row_of_rank = np.full(n_ranks, -1, np.int64)  # this query's frame rows so far
    bounds = np.zeros(coarse_k + 1, np.int64)
    n_rows = 0
    for q in range(len(taken)):
        for t in range(taken[q]):
            r = ranks[q, t]
            if row_of_rank[r] < 0:
                row_of_rank[r] = n_rows
                centroid = _centroid(keys[q, r])
                centroid_of[n_rows], query_of[n_rows] = centroid, q
                bounds[centroid + 1] += 1
                n_rows += 1
            cell_rows[q, t] = row_of_rank[r]
        for t in range(taken[q]):
            row_of_rank[ranks[q, t]] = -1
    for c in range(coarse_k):
        bounds[c + 1] += bounds[c]
    filled = bounds[:-1].copy()
    for row in range(n_rows):  # a counting sort of the rows by centroid
        slot = filled[centroid_of[row]]
        pair_queries[slot], pair_rows[slot] = query_of[row], row
        filled[centroid_of[row]] += 1
    return bounds, n_rows


def assign_frames(keys, ranks, taken, coarse_k, half: int, scratch: Scratch = SCRATCH):
    """The (query, centroid) pairs the scan needs for one half (``half`` names its
    arrays in ``scratch``): a row of the frames array for each, numbered query by
    query, and the pairs grouped by centroid.

    Query ``q`` needs its ``r``-th nearest centroid (``keys[q, r]``, see
    :func:`sorted_centroids`) for each rank ``r`` among ``ranks[q, :taken[q]]``.
    Returns ``(cell_rows, bounds, pair_queries, pair_rows)``: ``cell_rows[q, t]``
    is the frame row for the cell query ``q`` takes ``t``-th, and the pairs of
    centroid ``c`` are ``pair_queries[i]`` / ``pair_rows[i]`` for ``i`` in
    ``bounds[c]:bounds[c+1]``.
    """
    pairs = int(taken.sum())
    cell_rows = scratch.array(f"cell_rows{half}", ranks.shape, np.int64)
    centroid_of, query_of, pair_queries, pair_rows = (
        scratch.array(f"{name}{half}", (pairs,), np.int64)
        for name in ("centroid_of", "query_of", "pair_queries", "pair_rows")
    )
    bounds, n_rows = _assign_frames(keys, ranks, taken, coarse_k, cell_rows, centroid_of, query_of, pair_queries,
                                    pair_rows)
    return cell_rows, bounds, pair_queries[:n_rows], pair_rows[:n_rows]


class SizedKernels(NamedTuple):
    """Kernels compiled for one shape of index (see :func:`sized_kernels`, :func:`ivf_kernels`)."""

    rotate: Callable | None  # None: vectors wider than simd.MAX_ROTATED_DIM, rotated by BLAS
    scan: Callable


@lru_cache(maxsize=None)
def rotation_kernel(dim: int) -> Callable | None:
    """The compiled rotation of ``dim``-wide vectors into local frames (None where wider than
    ``simd.MAX_ROTATED_DIM``): ``frames[pair_rows[i]] = x[pair_queries[i]] @ rotations[c] -
    shifts[c]`` for the pairs ``i`` of every centroid ``c`` (``bounds[c]:bounds[c+1]``),
    ``_ROTATION_BLOCK`` at a time, so each rotation is read once per batch."""
    if dim > MAX_ROTATED_DIM:
        return None

    @numba.njit(**_JIT)
    def rotate(x, rotations, shifts, bounds, pair_queries, pair_rows, frames):
        queries = np.empty(_ROTATION_BLOCK, np.int64)
        rows = np.empty(_ROTATION_BLOCK, np.int64)
        for c in range(len(bounds) - 1):
            i, stop = bounds[c], bounds[c + 1]
            while i + _ROTATION_BLOCK <= stop:
                for k in range(_ROTATION_BLOCK):
                    queries[k], rows[k] = pair_queries[i + k], pair_rows[i + k]
                rotate_block(x, queries, rotations, c, shifts, frames, rows, _ROTATION_BLOCK, dim)
                i += _ROTATION_BLOCK
            while i < stop:  # the rest one by one: a centroid that few queries need is common
                queries[0], rows[0] = pair_queries[i], pair_rows[i]
                rotate_block(x, queries, rotations, c, shifts, frames, rows, 1, dim)
                i += 1

    return rotate


@lru_cache(maxsize=None)
def sized_kernels(half_m: int, sub_dim: int, half_dim: int) -> SizedKernels:
    """The rotation and scan kernels of the multi-index for ``half_m`` subquantizers of
    ``sub_dim`` dimensions per half of ``half_dim``: the sizes are constants of the
    compiled code (numba caches one compilation per set of sizes)."""

    @numba.njit(**_JIT)
    def scan(cells, taken, frames1, cell_rows1, frames2, cell_rows2, cell_bounds, codes, codewords1, codewords2,
             shortlist, positions_of, distances):
        """Asymmetric distances of each query to the vectors of its cells, and the
        ``shortlist`` smallest with their database positions (sorted; ``inf``/-1 padding).

        A candidate's distance is, per half, the squared distance between the
        query's residual in the cell centroid's local frame (``frames1[cell_rows1[q,
        t]]`` for the ``t``-th cell ``cells[q, t]`` of query ``q``, see
        :func:`assign_frames`) and the candidate's residual as decoded from its
        codes (``codewords1[s * k + c]`` is codeword ``c`` of subquantizer ``s``),
        summed over both halves. Decoding costs ``d`` reads per candidate against
        ``m`` for lookup tables, but a table per (query, centroid) costs
        ``k * d/2`` to build and serves a few candidates here.
        """
        _check_room(cells, taken, cell_bounds, len(positions_of))
        n_queries = len(taken)
        heap, heap_positions, best, positions = _shortlist_arrays(n_queries, shortlist)
        for q in range(n_queries):
            n = 0
            for t in range(taken[q]):
                row1, row2, cell = cell_rows1[q, t], cell_rows2[q, t], cells[q, t]
                for position in range(cell_bounds[cell], cell_bounds[cell + 1]):
                    positions_of[n] = position
                    distances[n] = residual_distance(
                        frames1, row1, codes, position, 0, codewords1, half_m, sub_dim
                    ) + residual_distance(frames2, row2, codes, position, half_m, codewords2, half_m, sub_dim)
                    n += 1
            _take_shortlist(distances, positions_of, n, heap, heap_positions, best[q], positions[q])
        return best, positions

    return SizedKernels(rotation_kernel(half_dim), scan)


@lru_cache(maxsize=None)
def ivf_kernels(m: int, sub_dim: int, dim: int) -> SizedKernels:
    """The rotation and scan kernels of the IVF coarse quantizer for ``m`` subquantizers
    of ``sub_dim`` dimensions over vectors of ``dim``: one local frame per (query, cell)."""

    @numba.njit(**_JIT)
    def scan(cells, taken, first_rows, frames, cell_bounds, codes, codewords, shortlist, positions_of, distances):
        """As the multi-index scan, with one frame per cell: query ``q``'s ``t``-th cell
        ``cells[q, t]`` is scored against row ``first_rows[q] + t`` of ``frames``."""
        _check_room(cells, taken, cell_bounds, len(positions_of))
        n_queries = len(taken)
        heap, heap_positions, best, positions = _shortlist_arrays(n_queries, shortlist)
        for q in range(n_queries):
            n = 0
            for t in range(taken[q]):
                row, cell = first_rows[q] + t, cells[q, t]
                for position in range(cell_bounds[cell], cell_bounds[cell + 1]):
                    positions_of[n] = position
                    distances[n] = residual_distance(frames, row, codes, position, 0, codewords, m, sub_dim)
                    n += 1
            _take_shortlist(distances, positions_of, n, heap, heap_positions, best[q], positions[q])
        return best, positions

    return SizedKernels(rotation_kernel(dim), scan)


@numba.njit(**_JIT)
def _check_room(cells, taken, cell_bounds, room):
    for q in range(len(taken)):
        held = 0
        for t in range(taken[q]):
            held += cell_bounds[cells[q, t] + 1] - cell_bounds[cells[q, t]]
        if held > room:
            raise ValueError("LOPQ scan: a query's cells hold more candidates than its work arrays")


@numba.njit(**_JIT)
def _shortlist_arrays(n_queries, shortlist):
    """A max-heap (values, positions) of ``shortlist`` entries and the ``[nq, shortlist]`` results."""
    return (np.empty(shortlist, np.float32), np.empty(shortlist, np.int64),
            np.empty((n_queries, shortlist), np.float32), np.empty((n_queries, shortlist), np.int64))


@numba.njit(**_JIT)
def _take_shortlist(distances, positions_of, n, heap, heap_positions, best, positions):
    """The ``len(heap)`` smallest of ``distances[:n]``, sorted, into ``best`` with their
    ``positions_of`` (``inf``/-1 padding). A query's candidates are all scored before
    this runs: a shortlist test inside the scoring loop would stall it on a
    data-dependent branch."""
    shortlist = len(heap)
    heap[:] = np.inf
    heap_positions[:] = -1
    for i in range(n):
        if distances[i] < heap[0]:
            heap[0], heap_positions[0] = distances[i], positions_of[i]
            _sift_down_max(heap, heap_positions, shortlist)
    for size in range(shortlist - 1, -1, -1):  # heap sort: the largest left goes last
        best[size], positions[size] = heap[0], heap_positions[0]
        heap[0], heap_positions[0] = heap[size], heap_positions[size]
        _sift_down_max(heap, heap_positions, size)


# ---------------------------------------------------------------------- IVF coarse quantizer


@numba.njit(inline="always", **_JIT)
def _push(heap, heap_cells, filled, d, c):
    """Add ``(d, c)`` to a max-heap of ``filled`` entries that has room for it."""
    slot = filled
    heap[slot], heap_cells[slot] = d, c
    while slot > 0:
        parent = (slot - 1) // 2
        if heap[parent] >= heap[slot]:
            break
        heap[parent], heap[slot] = heap[slot], heap[parent]
        heap_cells[parent], heap_cells[slot] = heap_cells[slot], heap_cells[parent]
        slot = parent


@numba.njit(**_JIT)
def _select_lists_within(products, norms, cell_sizes, budget, cells, taken, heap, heap_cells):
    """See :func:`select_lists`, for one block of queries: ``products[q, c]`` is query ``q``'s
    inner product with centroid ``c`` and ``norms[c]`` the centroid's squared norm (``inf``
    for an empty cell), so ``norms[c] - 2 * products[q, c]`` orders the cells as their
    distances do. Each query's nearest non-empty cells go through a max-heap of
    ``cells.shape[1]`` of them and are taken by distance until they hold ``budget``
    vectors; ``taken`` is -1 for a query whose heap held too few vectors.

    Once the heap is full, cells are tested ``_SELECTION_LANES`` at a time against its
    largest distance with no branch (vector code); only a group with a nearer cell goes
    through the heap, one cell at a time."""
    n_queries, n_cells = products.shape
    room = cells.shape[1]
    total = cell_sizes.sum()
    for q in range(n_queries):
        row = products[q]
        filled, c = 0, 0
        while c < n_cells and filled < room:
            d = norms[c] - 2.0 * row[c]
            if d < np.inf:
                _push(heap, heap_cells, filled, d, c)
                filled += 1
            c += 1
        while c < n_cells:
            if c + _SELECTION_LANES <= n_cells and not any_nearer(row, norms, c, heap[0], _SELECTION_LANES):
                c += _SELECTION_LANES
                continue
            for j in range(c, min(c + _SELECTION_LANES, n_cells)):
                d = norms[j] - 2.0 * row[j]
                if d < heap[0]:
                    heap[0], heap_cells[0] = d, j
                    _sift_down_max(heap, heap_cells, room)
            c += _SELECTION_LANES
        held = 0
        for f in range(filled):
            held += cell_sizes[heap_cells[f]]
        if held < budget and held < total:
            taken[q] = -1
            continue
        for size in range(filled - 1, -1, -1):  # heap sort, nearest first
            cells[q, size] = heap_cells[0]
            heap[0], heap_cells[0] = heap[size], heap_cells[size]
            _sift_down_max(heap, heap_cells, size)
        count, collected = 0, 0
        while count < filled and collected < budget:
            collected += cell_sizes[cells[q, count]]
            count += 1
        taken[q] = count


_PRODUCTS_BYTES = 2**22  # the inner products of a block of queries with every centroid: kept in cache
_SELECTION_LANES = 16  # cells tested together against the heap's largest distance


def select_lists(queries: np.ndarray, centroids: np.ndarray, norms: np.ndarray, cell_sizes: np.ndarray, budget: int,
                 scratch: Scratch = SCRATCH):
    """The cells of each query in order of distance to their centroids (``norms``: the
    centroids' squared norms), the non-empty ones taken until they hold ``budget``
    vectors: ``(cells, taken)``, query ``q`` taking ``cells[q, :taken[q]]``.

    Queries go in blocks whose inner products with the centroids (one matrix product)
    stay in cache while the kernel ranks them. A heap keeps the cells the budget needs
    at the average density plus a few (cells near a query are denser than the average,
    so this is mostly ample); a query whose heap still holds fewer vectors is run again
    with room for every cell.
    """
    n_queries, n_cells = len(queries), len(centroids)
    non_empty = int(np.count_nonzero(cell_sizes))
    average = max(int(cell_sizes.sum()) / max(non_empty, 1), 1e-9)
    room = max(1, min(non_empty, math.ceil(budget / average) + 4))
    cells = scratch.array("list_cells", (n_queries, room), np.int64)
    taken = np.empty(n_queries, np.int64)
    heap = (scratch.array("list_heap", (room,), np.float32), scratch.array("list_heap_cells", (room,), np.int64))
    norms = np.where(cell_sizes > 0, norms, np.inf).astype(np.float32)  # an empty cell is never nearer
    block = max(16, _PRODUCTS_BYTES // (4 * max(n_cells, 1)))
    for start in range(0, n_queries, block):
        part = slice(start, min(start + block, n_queries))
        products = np.matmul(queries[part], centroids.T,
                             out=scratch.array("list_products", (part.stop - start, n_cells), np.float32))
        _select_lists_within(products, norms, cell_sizes, budget, cells[part], taken[part], *heap)
    crowded = np.flatnonzero(taken < 0)
    if len(crowded):
        everywhere = max(non_empty, 1)
        again, again_taken = np.empty((len(crowded), everywhere), np.int64), np.empty(len(crowded), np.int64)
        heap = (np.empty(everywhere, np.float32), np.empty(everywhere, np.int64))
        products = np.ascontiguousarray(queries[crowded] @ centroids.T, dtype=np.float32)
        _select_lists_within(products, norms, cell_sizes, budget, again, again_taken, *heap)
        wide = np.zeros((n_queries, max(int(again_taken.max()), room)), np.int64)
        wide[:, :room] = cells
        wide[crowded, : again.shape[1]] = again[:, : wide.shape[1]]
        cells = wide
        taken[crowded] = again_taken
    return cells, taken


@numba.njit(**_JIT)
def _group_pairs(cells, taken, first_rows, bounds, pair_queries, pair_rows):
    n_rows = 0
    for q in range(len(taken)):
        first_rows[q] = n_rows
        for t in range(taken[q]):
            bounds[cells[q, t] + 1] += 1
        n_rows += taken[q]
    for c in range(len(bounds) - 1):
        bounds[c + 1] += bounds[c]
    filled = bounds[:-1].copy()
    for q in range(len(taken)):  # a counting sort of the (query, cell) pairs by cell
        for t in range(taken[q]):
            slot = filled[cells[q, t]]
            pair_queries[slot], pair_rows[slot] = q, first_rows[q] + t
            filled[cells[q, t]] += 1


def group_pairs(cells, taken, n_cells: int, scratch: Scratch = SCRATCH):
    """The (query, cell) pairs of :func:`select_lists` grouped by cell, for the rotation:
    ``(first_rows, bounds, pair_queries, pair_rows)``. Frame rows are numbered query by
    query (query ``q``'s ``t``-th cell is row ``first_rows[q] + t``); the pairs of
    cell ``c`` are ``pair_queries[i]`` / ``pair_rows[i]`` for ``i`` in ``bounds[c]:bounds[c+1]``."""
    pairs = int(taken.sum())
    first_rows = scratch.array("first_rows", (len(taken),), np.int64)
    bounds = np.zeros(n_cells + 1, np.int64)
    pair_queries, pair_rows = (scratch.array(name, (pairs,), np.int64) for name in ("pair_queries", "pair_rows"))
    _group_pairs(cells, taken, first_rows, bounds, pair_queries, pair_rows)
    return first_rows, bounds, pair_queries, pair_rows


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

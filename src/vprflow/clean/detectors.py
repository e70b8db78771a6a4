"""Detectors that need no weights: grayscale, collage and near-duplicate images.

Each works on one decoded RGB image and returns a number, so it can run in the
DataLoader workers next to decoding; the thresholds are applied later, over all
shards at once (:mod:`vprflow.clean.stage`).
"""

from __future__ import annotations

import cv2
import numpy as np

# Chroma is measured on a copy at most this many pixels on its long side: colour
# statistics do not need more, and large photos would cost time for nothing.
CHROMA_SIDE = 256
CHROMA_PERCENTILE = 95

# Collage seams are looked for where a grid of equal tiles puts them: halves (2x2, 1x2)
# or both thirds (3x3, 1x3), within a slack of this fraction of the side (rounding, thin
# borders between tiles).
SEAM_GRIDS = ((1 / 2,), (1 / 3, 2 / 3))
SEAM_SLACK = 0.02
SEAM_MIN_STEP = 16.0  # levels (0..255) across the seam in the channel that changes most
SEAM_SHARPNESS = 3.0  # the step across the seam against the change within either side

HASH_BYTES = 8


def shrink(image: np.ndarray, longest: int = 512) -> np.ndarray:
    """A copy at most ``longest`` pixels on its long side (the image itself when smaller)."""
    scale = longest / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def chroma_spread(rgb: np.ndarray) -> float:
    """How far the colours stray from the image's median colour, in CIELAB a*b* units.

    A black-and-white picture scores about 0, and a tinted one (sepia, a blue cast)
    stays low because the tint itself is the median: it is not mistaken for colour.
    The 95th percentile lets a small coloured stamp or logo pass as grayscale.
    """
    lab = cv2.cvtColor(shrink(rgb, CHROMA_SIDE), cv2.COLOR_RGB2LAB)
    chroma = lab[..., 1:].reshape(-1, 2).astype(np.float32)  # 8-bit a*, b* are offset by 128, same units
    deviation = np.linalg.norm(chroma - np.median(chroma, axis=0), axis=1)
    return float(np.percentile(deviation, CHROMA_PERCENTILE))


def _step_coverage(lines: np.ndarray, boundary: int) -> float:
    """Fraction of positions along the boundary before ``lines[boundary]`` where the image jumps.

    The jump is measured across two lines (a seam blurred by resizing still counts) and
    must dwarf the change within the two lines on either side: content that merely has
    an edge there (a kerb, a window row) changes gradually or keeps changing beyond it.
    """
    def change(a: int, b: int) -> np.ndarray:
        return np.abs(lines[a] - lines[b]).max(axis=-1)  # the channel that changes most

    across = change(boundary + 1, boundary - 2)
    within = (change(boundary - 2, boundary - 4) + change(boundary + 3, boundary + 1)) / 2
    return float(np.mean((across > SEAM_MIN_STEP) & (across > SEAM_SHARPNESS * within)))


def _line_coverage(lines: np.ndarray, fraction: float) -> float:
    n = lines.shape[0]
    centre, slack = round(n * fraction), max(1, round(SEAM_SLACK * n))
    boundaries = range(max(4, centre - slack), min(n - 3, centre + slack + 1))
    return max((_step_coverage(lines, b) for b in boundaries), default=0.0)


def seam_strength(rgb: np.ndarray) -> float:
    """Strongest straight seam of a tile grid, as the fraction of the line it spans.

    A collage of photos pasted on a grid has lines across the whole image where one
    photo ends and the next begins; a single photo seldom has a sharp step all the way
    across at exactly half its height or width, and hardly ever at both thirds. A grid
    scores its weakest line. 1.0: seams the whole way across; on the demo world the
    planted collages score 0.78 or more and street views 0.69 or less (a facade edge
    or the horizon that happens to sit in the middle).
    """
    image = shrink(rgb).astype(np.float32)
    return max(min(_line_coverage(lines, f) for f in grid)
               for lines in (image, image.transpose(1, 0, 2))  # rows: horizontal seams; columns: vertical seams
               for grid in SEAM_GRIDS)


def perceptual_hash(rgb: np.ndarray) -> str:
    """64-bit DCT perceptual hash (pHash) as 16 hex digits.

    Bits are the signs of the 8x8 lowest DCT frequencies of a 32x32 grey thumbnail
    against their median, so recompression and resizing flip few bits while a
    different picture flips about half.
    """
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    thumbnail = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(thumbnail)[:8, :8].reshape(-1)
    bits = low > np.median(low[1:])  # the DC term (overall brightness) does not set the median
    return np.packbits(bits).tobytes().hex()


def hash_codes(hashes) -> np.ndarray:
    """Hex hashes -> an (n, 8) uint8 array, the layout faiss binary indexes take."""
    data = bytes.fromhex("".join(hashes))
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, HASH_BYTES)


def near_pairs(codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of distinct codes within ``max_distance`` bits: (i, j, distance).

    Multi-index hashing (faiss ``IndexBinaryMultiHash``): with ``max_distance + 1``
    disjoint chunks, two codes that close agree exactly on at least one chunk, so the
    search is exact without comparing all pairs. Larger distances mean shorter chunks
    and more candidates, so it slows down as ``max_distance`` grows.
    """
    import faiss

    n_chunks = max_distance + 1
    index = faiss.IndexBinaryMultiHash(8 * HASH_BYTES, n_chunks, 8 * HASH_BYTES // n_chunks)
    index.add(codes)
    limits, distances, neighbours = index.range_search(codes, max_distance + 1)  # radius is exclusive
    queries = np.repeat(np.arange(len(codes)), np.diff(limits).astype(np.int64))
    forward = queries < neighbours
    return queries[forward], neighbours[forward], distances[forward].astype(int)


def duplicate_groups(hashes, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Group images whose hashes are within ``max_distance`` bits, transitively.

    Returns ``(group, nearest)``: a group number per image (images alone get their own)
    and the distance to the nearest other image within reach (-1 when none).
    Identical hashes are folded first, so a thousand copies of one picture cost one search.
    """
    if len(hashes) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    codes, inverse = np.unique(hash_codes(hashes), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    left, right, distance = near_pairs(codes, max_distance)

    parent = np.arange(len(codes))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(left, right):
        parent[root(i)] = root(j)
    group = np.array([root(i) for i in range(len(codes))], dtype=np.int64)[inverse]

    nearest_code = np.full(len(codes), -1)
    for ends in ((left, right), (right, left)):
        for i, d in zip(ends[0], distance):
            if nearest_code[i] < 0 or d < nearest_code[i]:
                nearest_code[i] = d
    nearest = nearest_code[inverse]
    copies = np.bincount(inverse, minlength=len(codes))
    nearest[copies[inverse] > 1] = 0  # an identical hash elsewhere
    return group, nearest

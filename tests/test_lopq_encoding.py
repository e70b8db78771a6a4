"""LOPQ encoding on a hand-built index whose local means are large, so a vector's code
depends on removing its centroid's local mean before the rotation."""

import numpy as np

from vprflow.search.lopq.index import LOPQIndex

# The sizes of test_lopq.py's index (d = 32, m = 8), so its compiled kernels serve here too.
HALF_DIM, SUBSPACES, SUB_DIM = 16, 4, 4


def hand_built_index() -> LOPQIndex:
    """One coarse centroid per half at (1, ..., 1) with local mean 4 on the first axis of each
    of the 4 subspaces, identity rotations, codewords 0 and 8 e_0 in every subspace.

    A stored half x gets, per subspace, the codeword nearest to (x - centroid - mean) @ R, and
    decodes to centroid + mean + codeword."""
    centroid = np.ones(HALF_DIM)
    mean = np.zeros(HALF_DIM)
    mean[::SUB_DIM] = 4.0
    codewords = np.zeros((2, SUB_DIM))
    codewords[1, 0] = 8.0
    return LOPQIndex(coarse_centroids=np.stack([[centroid]] * 2), local_means=np.stack([[mean]] * 2),
                     rotations=np.stack([[np.eye(HALF_DIM)]] * 2), codebooks=np.tile(codewords, (2, SUBSPACES, 1, 1)))


def test_codes_are_taken_after_removing_the_local_mean():
    index = hand_built_index()
    centre = np.tile(np.ones(HALF_DIM) + np.tile([4.0, 0, 0, 0], SUBSPACES), 2)  # centroid + mean, both halves
    step = np.tile([1.0, 0, 0, 0], 2 * SUBSPACES)  # the first axis of each of the 8 subspaces
    near = centre + 0.5 * step  # x - centroid - mean = 0.5 e_0 in every subspace -> codeword 0
    far = centre + 8.0 * step  # 8 e_0 in every subspace -> codeword 8 e_0, decoded exactly
    index.add(np.stack([near, far]).astype(np.float32))
    # Asymmetric distances of the query `near` (0.5 e_0 in each of its 8 subspace frames):
    #   to `near`, decoded as centre:          8 x 0.5^2 = 2
    #   to `far`, decoded as centre + 8 step:  8 x 7.5^2 = 450
    # (Adding the mean instead of removing it would give both vectors codeword 8 e_0: 450, 450.)
    scores, ids = index.nearest(near[None].astype(np.float32), 2, candidates=10)
    np.testing.assert_array_equal(ids, [[0, 1]])
    np.testing.assert_allclose(scores, [[2.0, 450.0]], rtol=1e-6)
    scores, ids = index.nearest(far[None].astype(np.float32), 1, candidates=10)  # `far` is its own code
    assert ids[0, 0] == 1 and scores[0, 0] == 0.0

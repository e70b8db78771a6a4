"""Local features: keypoints with descriptors, stored per shard by the extraction stage and
matched pairwise by geometric verification.

* ``store``: the on-disk format (per shard: ``images.parquet``, ``keypoints.npy``,
  ``descriptors.npy``, memory-mapped when read back) and :class:`LocalFeatures`;
* ``extract``: streaming extraction of a shard with a local descriptor (``sift``, ``delf``);
* ``matching``: tentative matches (mutual nearest neighbours or Lowe's ratio test, through
  faiss) and RANSAC (homography or fundamental matrix) of one pair;
* ``verification``: the shortlists of a search verified in batches, and the scoring that
  lets a verified pair climb by its inliers above the query's chance level and leaves
  everything else in its global order;
* ``pictures``: two photos side by side with their inlier correspondences.
"""

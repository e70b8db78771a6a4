"""Retrieval metrics, each from a neighbours table and the ground truth (see ``vprflow.tables``):

* ``recall``: Recall@N (first positive within the top N), its curve, and chance recall;
* ``average_precision``: mAP, mP@k, mR@k under the Revisited Oxford/Paris protocols or plain;
* ``precision``: P@k of a ranking, and leave-one-out P@k of descriptors by label;
* ``votes``: the place the top k agree on, and the share of queries it gets right.
"""

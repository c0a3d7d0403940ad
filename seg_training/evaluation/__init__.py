"""
Scoring models: seg-eval and its parts.

``seg_eval`` (seg-eval: a model on a dataset, through the node's pipeline), ``metrics``
(confusion matrix, IoU) and ``plots`` (confusion matrix and per-class IoU figures).
"""

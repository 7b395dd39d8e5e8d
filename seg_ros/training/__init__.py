"""Training side of seg_ros: losses (``losses``), optimisers and learning-rate schedules
(``schedules``), and the ``seg-train`` / ``seg-eval`` tools built on them.

Submodules are imported explicitly; this package imports nothing heavy on its own.
"""

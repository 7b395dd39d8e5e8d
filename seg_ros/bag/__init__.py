"""Evaluation on recorded road runs (rosbag2, sqlite3 or mcap) without a ROS installation.

``seg-bag`` (``cli.main``) streams a bag's camera frames through the same ``Segmenter`` as the
node and writes a compact bag of results, a side-by-side H.264 video, a mosaic, plots and a report;
several bags run on worker processes or a Dask cluster (``runs.evaluate_runs``) into one combined
report; ``seg-bag make`` records a video or an image folder as a bag.
"""

from seg_ros.bag.evaluate import EvaluationOptions, evaluate_bag
from seg_ros.bag.make import MakeOptions, make_bag
from seg_ros.bag.reader import BagError, BagReader
from seg_ros.bag.runs import evaluate_runs, find_bags

__all__ = ['BagError', 'BagReader', 'EvaluationOptions', 'MakeOptions', 'evaluate_bag', 'evaluate_runs',
           'find_bags', 'make_bag']

"""``python -m seg_ros.bench`` runs ``seg-bench``."""

import sys

from seg_ros.bench.cli import main

sys.exit(main())

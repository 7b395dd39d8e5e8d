"""Draw docs/ground_grid.png: a CamVid frame's overlay beside its ground grid and scan.

    .venv/bin/python scripts/ground_picture.py [--frame val/images/0016E5_07959.jpg] [--out docs/ground_grid.png]

The shipped ENet segments the frame; ``seg_ros.ground`` projects the mask with the node's default grid
and class roles. CamVid publishes no calibration, so the camera is assumed: a level pinhole with
fx = fy = 0.9 x width at the image centre, 1.3 m above the road (a dashboard camera).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

from seg_ros.ground import (
    FREE,
    OCCUPIED,
    CameraModel,
    CameraPose,
    GroundGrid,
    build_lookup,
    class_role_table,
    default_class_roles_file,
    load_class_roles,
    project_mask,
    scan_ranges,
)
from seg_ros.inference import Segmenter
from seg_ros.paths import default_checkpoint

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / 'shared' / 'data' / 'camvid'
CAMERA_HEIGHT = 1.3
GRID = GroundGrid(0.1, -10.0, 40.0, -20.0, 20.0)  # segment_node's defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frame', default='val/images/0016E5_07959.jpg', help='CamVid image, relative to its root')
    parser.add_argument('--out', type=Path, default=REPO / 'docs' / 'ground_grid.png')
    args = parser.parse_args()
    image = cv2.cvtColor(cv2.imread(str(CAMVID / args.frame)), cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    segmenter = Segmenter(default_checkpoint('enet'), device='cpu')
    result = segmenter.segment(image, outputs={'overlay'})
    focal = 0.9 * width
    camera = CameraModel(width, height, (focal, 0, width / 2, 0, focal, height / 2, 0, 0, 1))
    lookup = build_lookup(camera, CameraPose(0.0, 0.0, CAMERA_HEIGHT), GRID, (height, width))
    roles = class_role_table(segmenter.labels, load_class_roles(default_class_roles_file(), segmenter.labels))
    layer = project_mask(result.mask, lookup, roles, GRID)
    ranges = scan_ranges(layer, GRID)

    # Grid drawn as seen from above with x (forward) up and y (left) to the left.
    codes = layer.codes.reshape(GRID.height, GRID.width)
    shades = np.full(codes.shape, 0.65)
    shades[codes == FREE], shades[codes == OCCUPIED] = 1.0, 0.0
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={'width_ratios': [4, 3]})
    left.imshow(result.overlay)
    left.set_title(f'CamVid {Path(args.frame).stem}: ENet overlay')
    left.axis('off')
    extent = (GRID.max_y, GRID.min_y, GRID.min_x, GRID.max_x)
    right.imshow(shades.T[::-1, ::-1], cmap='gray', vmin=0, vmax=1, extent=extent, interpolation='nearest')
    bearings = GRID.angle_min + np.arange(GRID.bins) * GRID.angle_increment
    hits = np.isfinite(ranges) & (ranges < GRID.range_max)
    right.scatter(ranges[hits] * np.sin(bearings[hits]), ranges[hits] * np.cos(bearings[hits]), s=3, c='tab:red',
                  label='scan: nearest ground contact')
    right.plot(0, 0, marker='^', color='tab:blue', markersize=9, label='camera (base_link origin)')
    right.set_xlim(GRID.max_y, GRID.min_y)
    right.set_xlabel('y (m, left positive)')
    right.set_ylabel('x (m, forward)')
    right.set_title('grid: free white, occupied black, unknown grey')
    right.legend(loc='lower right', fontsize=8)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()

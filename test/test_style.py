"""Style runs as a test (as ament_lint does in ROS 2 packages): ruff over the package, tests and launch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    ruff = shutil.which('ruff', path=str(Path(sys.executable).parent)) or shutil.which('ruff')
    assert ruff, 'ruff is not installed (it is in the test extra: pip install .[test])'
    result = subprocess.run([ruff, 'check', 'seg_ros', 'test', 'launch', 'setup.py'], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

"""Where the package's shared files (config/, models/, launch/) are, installed or in a checkout.

An installed package keeps them in ``share/seg_ros`` (found through the ament index in a colcon
workspace, or under ``sys.prefix`` after a pip install); a source checkout has the same folders
at its root. Every candidate that exists is searched, in that order, so a pip or editable install
whose share folder holds only ``package.xml`` still finds the checkout's files.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ['default_checkpoint', 'fastdds_profile', 'package_share', 'share_dirs', 'shipped_checkpoints']

PACKAGE = 'seg_ros'
SOURCE_TREE = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = 'camvid'
FASTDDS_PROFILE = Path('config') / 'fastdds.xml'


def _ament_share() -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE))
    except (LookupError, OSError):  # PackageNotFoundError is a KeyError; no AMENT_PREFIX_PATH is an OSError
        return None


def share_dirs() -> list[Path]:
    """Existing share folders in search order: ament index, ``sys.prefix``, the source checkout."""
    candidates = [_ament_share(), Path(sys.prefix) / 'share' / PACKAGE]
    if (SOURCE_TREE / 'package.xml').is_file():
        candidates.append(SOURCE_TREE)
    return list(dict.fromkeys(path for path in candidates if path is not None and path.is_dir()))


def package_share() -> Path:
    """The first of :func:`share_dirs`; raises ``FileNotFoundError`` when there is none."""
    dirs = share_dirs()
    if not dirs:
        raise FileNotFoundError(f'no share folder of {PACKAGE} found (not installed, no checkout)')
    return dirs[0]


def shipped_checkpoints() -> list[Path]:
    """Every ``models/*.pt`` in the share folders (the first one wins for a repeated name)."""
    found: dict[str, Path] = {}
    for directory in share_dirs():
        for path in sorted((directory / 'models').glob('*.pt')):
            found.setdefault(path.name, path)
    return list(found.values())


def default_checkpoint(model: str, dataset: str = DEFAULT_DATASET) -> Path:
    """``models/<model>_<dataset>.pt`` from the share folders; the error lists what is shipped."""
    name = f'{model}_{dataset}.pt'
    for path in shipped_checkpoints():
        if path.name == name:
            return path
    shipped = ', '.join(path.name for path in shipped_checkpoints()) or 'none'
    searched = ', '.join(str(directory / 'models') for directory in share_dirs()) or 'no share folder found'
    raise FileNotFoundError(f'no shipped checkpoint {name} for model {model!r} (searched {searched}); '
                            f'shipped checkpoints: {shipped}; set the weights parameter to a checkpoint file')


def fastdds_profile() -> Path:
    """The package's Fast DDS profile (camera-sized images between processes, README "DDS")."""
    for directory in share_dirs():
        if (directory / FASTDDS_PROFILE).is_file():
            return directory / FASTDDS_PROFILE
    searched = ', '.join(map(str, share_dirs())) or 'no share folder found'
    raise FileNotFoundError(f'{FASTDDS_PROFILE} not found (searched {searched})')

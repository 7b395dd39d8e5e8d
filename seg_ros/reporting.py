"""What several commands print with: the machine a figure was measured on, markdown tables, durations.

Library code (model cards, studies, benchmarks) imports these; none of it imports a command.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from seg_ros import __version__

__all__ = ['clock_duration', 'cpu_flags', 'machine_info', 'markdown_table']

# Prefixes of the x86 flags that decide whether reduced precision is native (AMX, AVX512-BF16/FP16, VNNI).
PRECISION_FLAGS = ('amx', 'avx512_bf16', 'avx512_fp16', 'avx512_vnni', 'avx512f')


def clock_duration(seconds: float | None) -> str | None:
    """``12.3 s`` under a minute, else ``h:mm:ss``; None stays None."""
    if seconds is None:
        return None
    if seconds < 60:
        return f'{seconds:.1f} s'
    minutes, secs = divmod(round(seconds), 60)
    return f'{minutes // 60}:{minutes % 60:02d}:{secs:02d}'


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return '-'
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if isinstance(value, float):
        return f'{value:.{digits}g}' if abs(value) < 10 ** digits else f'{value:.0f}'
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: dict[str, str]) -> str:
    """Rows as a markdown table of ``columns`` (key -> heading)."""
    lines = ['| ' + ' | '.join(columns.values()) + ' |', '|' + ' --- |' * len(columns)]
    lines += ['| ' + ' | '.join(_fmt(row.get(key)) for key in columns) + ' |' for row in rows]
    return '\n'.join(lines)


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: CPU and its precision flags, libraries, GPU."""
    from seg_ros.inference.backends import SERVES, cpu_name, library_versions

    info: dict[str, Any] = {
        'seg_ros': __version__, 'torch': torch.__version__, 'python': platform.python_version(),
        'platform': platform.platform(), 'cpu': cpu_name(), 'cpu_flags': cpu_flags(), 'cpu_cores': os.cpu_count(),
        'torch_threads': torch.get_num_threads(), 'device': str(device),
        'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY', 'default (active)'),
        'load_average_1_5_15': [round(v, 2) for v in os.getloadavg()],
    }
    info.update({name: version for name, version in library_versions().items() if name in SERVES and version})
    if device.type == 'cuda':
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2 ** 30, 1),
                    cuda_runtime=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu_driver=_nvidia_driver())
    return info


def cpu_flags() -> list[str]:
    """The CPU's instruction-set flags that decide reduced-precision speed (bf16, fp16, AMX, VNNI)."""
    with contextlib.suppress(OSError):
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('flags'):
                return sorted(flag for flag in line.split(':', 1)[1].split() if flag.startswith(PRECISION_FLAGS))
    return []


def _nvidia_driver() -> str | None:
    try:
        result = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else None

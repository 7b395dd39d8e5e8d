"""Fixtures of the reliability suite: a ROS context with a probe node, and the figures tests report."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``figures(key=value, ...)`` records what this test measured, for the end-of-run summary."""

    def record(**values: Any) -> None:
        _FIGURES.setdefault(request.node.name, {}).update(values)

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section('reliability figures')
    for name, values in _FIGURES.items():
        terminalreporter.write_line(f'{name}: {json.dumps(values)}')
    target = os.environ.get('SEG_ROS_FIGURES')
    if target:
        Path(target).write_text(json.dumps(_FIGURES, indent=2) + '\n')
        terminalreporter.write_line(f'written to {target}')

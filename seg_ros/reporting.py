"""Small formatting helpers that several commands print with."""

from __future__ import annotations

__all__ = ['clock_duration']


def clock_duration(seconds: float | None) -> str | None:
    """``12.3 s`` under a minute, else ``h:mm:ss``; None stays None."""
    if seconds is None:
        return None
    if seconds < 60:
        return f'{seconds:.1f} s'
    minutes, secs = divmod(round(seconds), 60)
    return f'{minutes // 60}:{minutes % 60:02d}:{secs:02d}'

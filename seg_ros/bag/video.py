"""Pictures of the input beside each model's result: the side-by-side H.264 video and the mosaic PNG.

``SideBySide`` lays out panels of one height in a row, the panel's title above it and its class
legend (colour swatch and name per class) below. The video holds one such row per frame; the
mosaic (the paper's Figure 2) stacks the rows of a few chosen frames under one title bar and
one legend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from seg_ros.labels import LabelSet

__all__ = ['MosaicRows', 'Panel', 'SideBySide', 'VideoFile', 'save_png']

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_SCALE, _TEXT_THICKNESS = 0.45, 1
_TITLE_HEIGHT, _LEGEND_ROW, _SWATCH, _GAP = 24, 18, 12, 4
_BACKGROUND, _TEXT = (255, 255, 255), (20, 20, 20)
_EMPTY_PANEL = (200, 200, 200)


@dataclass(frozen=True)
class Panel:
    title: str
    labels: LabelSet | None = None
    """Classes whose legend goes under the panel; None for the camera image."""


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, _FONT, _TEXT_SCALE, _TEXT_THICKNESS)[0][0]


def _put_text(image: np.ndarray, text: str, origin: tuple[int, int], color: tuple[int, int, int] = _TEXT
              ) -> None:
    cv2.putText(image, text, origin, _FONT, _TEXT_SCALE, color, _TEXT_THICKNESS, cv2.LINE_AA)


def _legend(labels: LabelSet, width: int) -> np.ndarray:
    """Swatch and name of every class, wrapped into rows ``width`` wide."""
    entries = [(name, color, _SWATCH + _GAP + _text_width(name) + 3 * _GAP)
               for name, color in zip(labels.names, labels.colors, strict=True)]
    rows, x = 1, _GAP
    for _, _, entry_width in entries:
        if x + entry_width > width and x > _GAP:
            rows, x = rows + 1, _GAP
        x += entry_width
    legend = np.full((rows * _LEGEND_ROW + _GAP, width, 3), _BACKGROUND, np.uint8)
    row, x = 0, _GAP
    for name, color, entry_width in entries:
        if x + entry_width > width and x > _GAP:
            row, x = row + 1, _GAP
        top = row * _LEGEND_ROW + _GAP
        cv2.rectangle(legend, (x, top), (x + _SWATCH, top + _SWATCH), color, -1)
        cv2.rectangle(legend, (x, top), (x + _SWATCH, top + _SWATCH), _TEXT, 1)
        _put_text(legend, name, (x + _SWATCH + _GAP, top + _SWATCH - 1))
        x += entry_width
    return legend


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` at (height, width): area-averaged when shrinking, nearest (crisp masks) when growing."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    interpolation = cv2.INTER_AREA if height < image.shape[0] else cv2.INTER_NEAREST
    return cv2.resize(image, (width, height), interpolation=interpolation)


class SideBySide:
    """Panels for frames of ``frame_shape`` (height, width), shown ``height`` pixels high."""

    def __init__(self, panels: list[Panel], frame_shape: tuple[int, int], height: int) -> None:
        if height < 16:
            raise ValueError(f'panel height {height} is too small (at least 16)')
        self.panels = panels
        width = max(2, round(frame_shape[1] * height / frame_shape[0]) // 2 * 2)  # even: video codecs
        self.panel_size = (height // 2 * 2, width)
        legends = [_legend(p.labels, width) if p.labels else None for p in panels]
        legend_height = max((legend.shape[0] for legend in legends if legend is not None), default=0)
        self._footer = np.full((legend_height // 2 * 2 + 2, width * len(panels), 3), _BACKGROUND, np.uint8)
        for index, legend in enumerate(legends):
            if legend is not None:
                self._footer[:legend.shape[0], index * width:(index + 1) * width] = legend
        self._header = np.full((_TITLE_HEIGHT, width * len(panels), 3), _BACKGROUND, np.uint8)
        for index, panel in enumerate(panels):
            _put_text(self._header, panel.title, (index * width + _GAP, _TITLE_HEIGHT - 8))

    @property
    def header(self) -> np.ndarray:
        """The title bar over all panels."""
        return self._header

    @property
    def footer(self) -> np.ndarray:
        """The legends under all panels."""
        return self._footer

    def row(self, images: list[np.ndarray | None], caption: str = '') -> np.ndarray:
        """One RGB image per panel (None: an empty panel) side by side; ``caption`` on the first."""
        if len(images) != len(self.panels):
            raise ValueError(f'{len(images)} images for {len(self.panels)} panels')
        height, width = self.panel_size
        row = np.empty((height, width * len(images), 3), np.uint8)
        for index, image in enumerate(images):
            target = row[:, index * width:(index + 1) * width]
            if image is None:
                target[:] = _EMPTY_PANEL
            else:
                target[:] = _resize(image, self.panel_size)
        if caption:
            cv2.rectangle(row, (0, 0), (_text_width(caption) + 2 * _GAP, 20), _BACKGROUND, -1)
            _put_text(row, caption, (_GAP, 15))
        return row

    def frame(self, images: list[np.ndarray | None], caption: str = '') -> np.ndarray:
        """Title bar, panels and legends: one video frame."""
        return np.vstack([self._header, self.row(images, caption), self._footer])

    def mosaic(self, rows: list[np.ndarray]) -> np.ndarray:
        """Rows of ``row`` stacked under one title bar and over one legend, a thin gap between them."""
        gap = np.full((_GAP, self._header.shape[1], 3), _BACKGROUND, np.uint8)
        stacked = [self._header]
        for row in rows:
            stacked += [row, gap]
        return np.vstack([*stacked, self._footer])


class VideoFile:
    """An H.264 MP4 that browsers and GitHub play, written frame by frame (PyAV's own FFmpeg).

    yuv420p (the chroma layout every browser decodes), even width and height, and the index at the
    start of the file (``faststart``) so it plays while it loads. Opened at the first frame, whose
    size it keeps.
    """

    CRF = 23  # x264's default quality: sharp edges of colour masks stay readable

    def __init__(self, path: str | Path, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f'video frame rate {fps} must be positive')
        self.path, self.fps = Path(path), float(fps)
        self.frames = 0
        self._container: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._size: tuple[int, int] | None = None

    def _open(self, width: int, height: int) -> None:
        self._size = (max(2, width // 2 * 2), max(2, height // 2 * 2))
        self._container = av.open(str(self.path), 'w', format='mp4', options={'movflags': '+faststart'})
        self._stream = self._container.add_stream(
            'libx264', rate=Fraction(self.fps).limit_denominator(1001),
            options={'crf': str(self.CRF), 'preset': 'veryfast'})
        self._stream.width, self._stream.height = self._size
        self._stream.pix_fmt = 'yuv420p'

    def write(self, rgb: np.ndarray) -> None:
        if self._container is None:
            self._open(rgb.shape[1], rgb.shape[0])
        width, height = self._size
        if rgb.shape[1] < width or rgb.shape[0] < height or rgb.shape[1] > width + 1 or rgb.shape[0] > height + 1:
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:height, :width]), format='rgb24')
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        if self._container is not None:
            self._container.mux(self._stream.encode(None))  # the frames the encoder still holds
            self._container.close()
            self._container = None


class MosaicRows:
    """The mosaic's rows: the frames with the given indices, or ``count`` spread evenly over the run.

    Without indices the length of the run is not known in advance; every ``step``-th offered frame
    is kept, and when more than ``2 * count`` are kept the step doubles and every other one goes,
    so at most ``2 * count + 1`` rows are ever held.
    """

    def __init__(self, count: int = 4, indices: list[int] | None = None) -> None:
        if count < 1 and not indices:
            raise ValueError(f'mosaic frame count {count} must be at least 1')
        self.count = len(indices) if indices else count
        self._indices = set(indices) if indices else None
        self._offered = 0
        self._step = 1
        self._rows: dict[int, np.ndarray] = {}

    def offer(self, frame_index: int, make_row: Callable[[], np.ndarray]) -> None:
        """Consider the frame with ``frame_index``; ``make_row`` is called only if it is kept."""
        position, self._offered = self._offered, self._offered + 1
        if self._indices is not None:
            if frame_index in self._indices:
                self._rows[frame_index] = make_row()
            return
        if position % self._step:
            return
        self._rows[position] = make_row()
        while len(self._rows) > 2 * self.count:
            self._step *= 2
            self._rows = {p: row for p, row in self._rows.items() if p % self._step == 0}

    def rows(self) -> list[np.ndarray]:
        keys = sorted(self._rows)
        if len(keys) > self.count:
            keys = [keys[i] for i in np.linspace(0, len(keys) - 1, self.count).round().astype(int)]
        return [self._rows[key] for key in keys]


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    path = Path(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f'{path}: OpenCV could not write the PNG')
    return path

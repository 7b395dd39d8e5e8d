"""The speed figures of the four papers, the yardstick the targets compare against."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ['PAPER_FIGURES', 'PaperFigure']


@dataclass(frozen=True)
class PaperFigure:
    """A forward time a paper reports (batch 1), with its frames/s where the paper prints them."""

    network: str
    source: str
    hardware: str
    size: tuple[int, int]  # (height, width)
    ms: float
    printed_fps: float | None = None

    @property
    def fps(self) -> float:
        """The paper's frames/s; 1000 / ms where it prints none (its ms are rounded, its fps not)."""
        return self.printed_fps if self.printed_fps is not None else 1000.0 / self.ms


_TX1, _TITAN_X, _GTX_1080TI = 'Jetson TX1 (GPU)', 'Titan X Maxwell (GPU)', 'GTX 1080Ti (GPU)'
_XEON = 'Xeon E5-2623 v4, 8 cores / 16 threads (CPU)'


_ERFNET_TABLE, _DSNET_TABLE, _SEGFAST_TABLE = 'ERFNet Table IV', 'DSNet Table 8', 'SegFast Table 4'
PAPER_FIGURES: tuple[PaperFigure, ...] = (
    # ERFNet paper (papers/001), Table IV: forward pass (ms, fps); ENet's row is from its own paper.
    *(PaperFigure(net, _ERFNET_TABLE, _TX1, size, ms, fps) for net, size, ms, fps in (
        ('enet', (320, 480), 47, 21.1), ('enet', (360, 640), 69, 14.6), ('enet', (720, 1280), 262, 3.8),
        ('erfnet', (320, 480), 93, 10.8), ('erfnet', (360, 640), 141, 7.1), ('erfnet', (720, 1280), 535, 1.9))),
    *(PaperFigure(net, _ERFNET_TABLE, _TITAN_X, size, ms, fps) for net, size, ms, fps in (
        ('enet', (360, 640), 7, 135.4), ('enet', (720, 1280), 21, 46.8), ('enet', (1080, 1920), 46, 21.6),
        ('erfnet', (360, 640), 12, 83.3), ('erfnet', (720, 1280), 41, 24.4), ('erfnet', (1080, 1920), 88, 11.4))),
    # The same paper's text (section IV): 24 ms (41 FPS) at 1024x512 on the Titan X.
    PaperFigure('erfnet', 'ERFNet section IV', _TITAN_X, (512, 1024), 24, 41),
    # DSNet paper (papers/002), Table 8: ENet and ERFNet re-implemented in tensorpack.
    *(PaperFigure(net, _DSNET_TABLE, _GTX_1080TI, size, ms, fps) for net, size, ms, fps in (
        ('enet', (360, 640), 11.1, 89.7), ('enet', (720, 1280), 57.8, 17.3),
        ('enet', (1080, 1920), 126.6, 7.9), ('erfnet', (360, 640), 12.5, 79.9),
        ('erfnet', (720, 1280), 74.3, 13.4), ('erfnet', (1080, 1920), 165.2, 6.0),
        ('dsnet', (360, 640), 9.9, 100.5), ('dsnet', (720, 1280), 49.8, 20.1), ('dsnet', (1080, 1920), 102.0, 9.8))),
    # SegFast paper (papers/003), Table 4: forward pass in seconds on a CPU, 224x224 inputs.
    PaperFigure('segfast', _SEGFAST_TABLE, _XEON, (224, 224), 389),
    PaperFigure('segfast_basic', _SEGFAST_TABLE, _XEON, (224, 224), 419),
)

"""Hostile sizes are rejected before any large allocation, measured as the peak resident memory of a
fresh process (which sees native allocations, OpenCV's included, that ``tracemalloc`` does not).

- a raw ``Image`` whose header claims 100000 x 100000 rgb8 over a few bytes of data;
- a real PNG decompression bomb: a valid 50000 x 50000 file of about 0.3 MB that would decode to
  7.5 GB of RGB pixels;
- a JPEG bomb: a small JPEG whose frame header claims 65000 x 65000 (libjpeg fills the missing
  data, so OpenCV would allocate 12.7 GB for it).
"""

from __future__ import annotations

import json
import subprocess
import sys

from seg_ros.ros.conversions import MAX_PIXELS

from .harness import REPO

CONTROL = 'control: PNG 5000x5000 under a raised limit'

# Runs in a fresh interpreter: builds each hostile message, then converts it between two readings
# of the process's resident memory: before (VmRSS), and the peak since then (VmHWM, reset through
# /proc/self/clear_refs). ru_maxrss would not do: it keeps the parent's peak across fork and exec.
PROBE = r'''
import array, json, struct, sys, time, zlib
import cv2, numpy as np
from sensor_msgs.msg import CompressedImage, Image
from seg_ros.ros.conversions import MAX_PIXELS, ConversionError, compressed_to_array, image_to_array
CONTROL = sys.argv[1]

def png_bomb(width, height):
    """A valid 1-bit greyscale PNG of zeros, compressed a row at a time (never held whole)."""
    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    compressor, row, parts = zlib.compressobj(9), bytes(1 + (width + 7) // 8), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', b''.join(parts)) + chunk(b'IEND', b'')

def jpeg_bomb(width, height):
    ok, jpeg = cv2.imencode('.jpg', np.full((16, 16, 3), 128, np.uint8))
    payload = bytearray(jpeg.tobytes())
    sof = payload.index(b'\xff\xc0')
    payload[sof + 5:sof + 9] = struct.pack('>HH', height, width)
    return bytes(payload)

cases = {
    'raw 100000x100000 rgb8, 64 bytes of data': (image_to_array, Image(
        encoding='rgb8', width=100_000, height=100_000, step=300_000, data=array.array('B', bytes(64)))),
    'PNG bomb 50000x50000': (compressed_to_array, CompressedImage(
        format='png', data=array.array('B', png_bomb(50_000, 50_000)))),
    'JPEG bomb 65000x65000': (compressed_to_array, CompressedImage(
        format='jpeg', data=array.array('B', jpeg_bomb(65_000, 65_000)))),
    # The control: a bomb under the limit is decoded, and the reading sees its 75 MB.
    CONTROL: (compressed_to_array, CompressedImage(format='png', data=array.array('B', png_bomb(5000, 5000)))),
}
def memory_kib(field):
    with open('/proc/self/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ':'))

results = {}
for name, (convert, msg) in cases.items():
    with open('/proc/self/clear_refs', 'w') as clear_refs:
        clear_refs.write('5')  # VmHWM := VmRSS
    before = memory_kib('VmRSS')
    start = time.perf_counter()
    try:
        convert(msg, max_pixels=10**8 if name == CONTROL else MAX_PIXELS)
        error = None
    except ConversionError as exc:
        error = str(exc)
    results[name] = {'error': error, 'seconds': time.perf_counter() - start, 'bytes': len(msg.data),
                     'peak_growth_kib': memory_kib('VmHWM') - before}
print(json.dumps(results))
'''


def test_hostile_sizes_are_rejected_before_any_large_allocation(figures) -> None:
    result = subprocess.run([sys.executable, '-c', PROBE, CONTROL], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    cases = json.loads(result.stdout)
    control = cases.pop(CONTROL)
    assert control['error'] is None and control['peak_growth_kib'] > 70_000, control
    measured = {name: {'bytes': case['bytes'], 'peak_rss_growth_kib': case['peak_growth_kib'],
                       'rejected_in_ms': round(1e3 * case['seconds'], 3)} for name, case in cases.items()}
    figures(max_pixels=MAX_PIXELS, control_peak_rss_growth_kib=control['peak_growth_kib'], **measured)
    for name, case in cases.items():
        assert case['error'] is not None, f'{name} was accepted'
        assert 'exceeds the limit' in case['error'] or 'header claims' in case['error'], case['error']
        assert case['peak_growth_kib'] < 4096, f'{name}: peak resident memory grew {case["peak_growth_kib"]} KiB'

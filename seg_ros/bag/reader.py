"""Reading rosbag2 recordings without ROS, including ones a crash or a full disk left damaged.

``BagReader`` opens a bag folder (``metadata.yaml`` and its storage files) or a single ``.mcap``
or ``.db3`` file with ``rosbags``, and streams raw messages in time order. Where the normal
path fails it reads what it can:

- a folder without ``metadata.yaml`` (the recorder was killed before writing it): its storage
  files are read directly, in name order;
- an MCAP file without its summary and footer (cut off mid-write): rosbags is given the file up
  to its last complete record, followed by an empty footer, so it scans the data records;
- a storage error part-way (a corrupt sqlite page, a bad chunk checksum): reading ends there.

Every such event is kept in ``notes`` (how the bag was opened) or ``stop`` (where and why reading
ended early), for the report.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rosbags.rosbag2 import Reader, ReaderError

from seg_ros.frames.bagfiles import STORAGE_SUFFIXES

__all__ = ['BagError', 'BagReader', 'ReadStop', 'TopicInfo']

_MCAP_MAGIC = b'\x89MCAP0\r\n'
_MCAP_RECORD = struct.Struct('<BQ')  # opcode, content length
_MCAP_FOOTER_OPCODE = 0x02
# A DataEnd record (opcode 0x0F, no checksum) and a Footer (opcode 0x02) that points to no summary:
# what rosbags needs to scan an MCAP file's data section record by record.
_MCAP_EMPTY_END = (_MCAP_RECORD.pack(0x0F, 4) + bytes(4)
                   + _MCAP_RECORD.pack(_MCAP_FOOTER_OPCODE, 20) + bytes(20) + _MCAP_MAGIC)


class BagError(ValueError):
    """A bag that cannot be read at all; the message names the bag and the reason."""


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int
    """Messages on the topic, as far as the bag's index or a scan of its readable part tells."""
    qos: tuple[Any, ...] = ()
    """The QoS profiles (``rosbags.interfaces.Qos``) its publishers offered, as recorded."""


@dataclass(frozen=True)
class ReadStop:
    """Reading ended before the end of the bag."""

    reason: str
    messages: int
    """Messages read before the stop (of the topics asked for)."""
    last_timestamp: int | None
    """Bag time (ns) of the last message read, None when none was."""


class _McapPrefix(io.RawIOBase):
    """The first ``length`` bytes of a file followed by ``tail``, as one seekable read-only file."""

    def __init__(self, path: Path, length: int, tail: bytes) -> None:
        super().__init__()
        self._file = path.open('rb')
        self._length, self._tail = length, tail
        self._size = length + len(tail)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast('B')
        filled = 0
        if self._position < self._length:
            self._file.seek(self._position)
            wanted = min(len(view), self._length - self._position)
            filled = self._file.readinto(view[:wanted]) or 0
        if filled == len(view) or self._position + filled < self._length:
            self._position += filled
            return filled
        start = self._position + filled - self._length
        chunk = self._tail[start:start + len(view) - filled]
        view[filled:filled + len(chunk)] = chunk
        self._position += filled + len(chunk)
        return filled + len(chunk)

    def close(self) -> None:
        self._file.close()
        super().close()


class _TruncatedMcap:
    """An MCAP file cut off mid-write, presented to rosbags (its ``RPath`` protocol) as complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.readable_bytes = _complete_records_end(path)
        self.suffix, self.stem, self.name = path.suffix, path.stem, path.name

    def exists(self) -> bool:
        return True

    def is_dir(self) -> bool:
        return False

    def open(self, mode: str = 'rb', *args: Any, **kwargs: Any) -> io.BufferedReader:
        if mode != 'rb':
            raise ValueError(f'{self.path}: opened read-only, not {mode!r}')
        return io.BufferedReader(_McapPrefix(self.path, self.readable_bytes, _MCAP_EMPTY_END))

    def __str__(self) -> str:
        return str(self.path)


def _complete_records_end(path: Path) -> int:
    """Offset just past the last complete top-level record of an MCAP file."""
    size = path.stat().st_size
    with path.open('rb') as file:
        if file.read(len(_MCAP_MAGIC)) != _MCAP_MAGIC:
            raise BagError(f'{path}: not an MCAP file (no MCAP magic at its start)')
        end = len(_MCAP_MAGIC)
        while end + _MCAP_RECORD.size <= size:
            file.seek(end)
            opcode, length = _MCAP_RECORD.unpack(file.read(_MCAP_RECORD.size))
            # Opcode 0 is reserved: zeros where the writer never got to write.
            if opcode in (0, _MCAP_FOOTER_OPCODE) or end + _MCAP_RECORD.size + length > size:
                break
            end += _MCAP_RECORD.size + length
    return end


def _storage_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in STORAGE_SUFFIXES and p.is_file())


class BagReader:
    """A rosbag2 opened for reading, from a folder or a single storage file.

    Use as a context manager; ``messages`` streams ``(topic, msgtype, timestamp, raw CDR bytes)``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise BagError(f'bag {self.path}: no such file or folder')
        self.notes: list[str] = []
        self.stop: ReadStop | None = None
        self._readers: list[Reader] = []
        # Readers of MCAP files cut off mid-write -> where their readable part ends.
        self._cut_off: dict[Reader, str] = {}
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        self.storage = STORAGE_SUFFIXES.get(self._storage_suffix(), 'unknown')

    # -- opening -------------------------------------------------------------------------------

    def _open(self) -> None:
        if self.path.is_file():
            self._open_files([self.path])
            return
        if not (self.path / 'metadata.yaml').is_file():
            files = self._files_of_folder('it has no metadata.yaml')
            self.notes.append(f'{self.path} has no metadata.yaml (recording not closed?); read its '
                              f'storage files directly: {", ".join(p.name for p in files)}')
            self._open_files(files)
            return
        reader = Reader(self.path)
        try:
            reader.open()
        except (ReaderError, OSError) as error:
            files = self._files_of_folder(str(error))
            self.notes.append(f'{self.path} could not be opened as a whole ({error}); read its storage '
                              f'files one by one: {", ".join(p.name for p in files)}')
            self._open_files(files)
            return
        self._readers.append(reader)

    def _files_of_folder(self, problem: str) -> list[Path]:
        files = _storage_files(self.path)
        if not files:
            raise BagError(f'bag {self.path}: {problem}, and it holds no .mcap or .db3 file')
        return files

    def _open_files(self, files: list[Path]) -> None:
        for file in files:
            if file.suffix not in STORAGE_SUFFIXES:
                raise BagError(f'bag {file}: not a rosbag2 storage file (expected .mcap or .db3)')
            try:
                reader = Reader(file)
                reader.open()
            except (ReaderError, OSError) as error:
                if file.suffix != '.mcap':
                    raise BagError(f'bag {file}: cannot be read ({error})') from None
                reader = self._open_cut_off_mcap(file, error)
            self._readers.append(reader)

    def _open_cut_off_mcap(self, file: Path, error: Exception) -> Reader:
        truncated = _TruncatedMcap(file)
        reader = Reader(truncated)
        try:
            reader.open()
        except (ReaderError, OSError) as second:
            raise BagError(f'bag {file}: cannot be read ({error}), not even record by record '
                           f'({second})') from None
        size = file.stat().st_size
        self.notes.append(f'{file.name}: no usable summary or footer ({error}); read record by record')
        self._cut_off[reader] = (f'{file.name} is cut off: its records end at byte '
                                     f'{truncated.readable_bytes} of {size}'
                                     + ('' if truncated.readable_bytes == size else
                                        f', followed by {size - truncated.readable_bytes} bytes of an '
                                        'incomplete record'))
        return reader

    def _storage_suffix(self) -> str:
        if self.path.is_file():
            return self.path.suffix
        files = _storage_files(self.path)
        return files[0].suffix if files else ''

    def close(self) -> None:
        for reader in self._readers:
            if reader.is_open:
                reader.close()
        self._readers.clear()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what is in it ---------------------------------------------------------------------------

    @property
    def topics(self) -> dict[str, TopicInfo]:
        """Every topic of the bag by name (the message type of its first connection)."""
        topics: dict[str, TopicInfo] = {}
        for reader in self._readers:
            for connection in reader.connections:
                known = topics.get(connection.topic)
                count = connection.msgcount + (known.count if known else 0)
                msgtype = known.msgtype if known else connection.msgtype
                qos = known.qos if known else tuple(getattr(connection.ext, 'offered_qos_profiles', ()))
                topics[connection.topic] = TopicInfo(connection.topic, msgtype, count, qos)
        return dict(sorted(topics.items()))

    @property
    def start_time(self) -> int:
        """Bag time (ns) of the first message; 0 for an empty bag."""
        starts = [r.start_time for r in self._readers if r.message_count]
        return min(starts) if starts else 0

    @property
    def end_time(self) -> int:
        """Bag time (ns) just after the last message; 0 for an empty bag."""
        ends = [r.end_time for r in self._readers if r.message_count]
        return max(ends) if ends else 0

    @property
    def duration_s(self) -> float:
        """Seconds from the first message to the last."""
        return max(0, self.end_time - 1 - self.start_time) / 1e9 if self.end_time else 0.0

    @property
    def custom_data(self) -> dict[str, str]:
        """``custom_data`` of ``metadata.yaml`` (empty without one)."""
        metadata = self.path / 'metadata.yaml'
        if not metadata.is_file():
            return {}
        try:
            info = yaml.safe_load(metadata.read_text()).get('rosbag2_bagfile_information', {})
        except (yaml.YAMLError, AttributeError, OSError):
            return {}
        custom = info.get('custom_data') if isinstance(info, dict) else None
        return {str(k): str(v) for k, v in custom.items()} if isinstance(custom, dict) else {}

    # -- reading ---------------------------------------------------------------------------------

    def messages(self, topics: list[str], start: int | None = None, stop: int | None = None
                 ) -> Iterator[tuple[str, str, int, bytes]]:
        """``(topic, msgtype, bag time ns, CDR bytes)`` of ``topics`` in ``[start, stop)``, in time order.

        Damage (a storage error, or the end of a file that was cut off) ends the stream quietly
        and leaves the reason in ``self.stop``.
        """
        wanted = set(topics)
        count, last = 0, None
        for reader in self._readers:
            connections = [c for c in reader.connections if c.topic in wanted]
            if not connections:
                continue
            stream = reader.messages(connections=connections, start=start, stop=stop)
            while True:
                try:
                    connection, timestamp, raw = next(stream)
                except StopIteration:
                    if reader in self._cut_off:
                        self.stop = ReadStop(self._cut_off[reader], count, last)
                        return
                    break
                # The storage layers (apsw, the MCAP parser, zstd and lz4) raise their own error
                # types for damaged data; whichever it is, nothing after it can be read.
                except Exception as error:
                    self.stop = ReadStop(f'{type(error).__name__}: {error}', count, last)
                    return
                count, last = count + 1, timestamp
                yield connection.topic, connection.msgtype, timestamp, raw

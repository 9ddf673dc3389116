"""A configfs-tsm look-alike for tests: a FUSE filesystem with the kernel's TSM report semantics.

configfs cannot be imitated by a plain directory: ``mkdir`` must create the attribute files
atomically, writes to ``inblob`` are committed when the file is closed, reading ``outblob`` is
what generates the report (for the inputs current at that moment), ``generation`` counts
writes, and ``rmdir`` removes a directory that still shows attributes. A polling watcher would
race the provider. So this module mounts a real filesystem through ``/dev/fuse`` (raw FUSE
protocol, no libfuse) whose behaviour follows drivers/virt/coco/tsm.c and sev-guest's
``sev_report_new`` (Linux 6.7+):

* ``mkdir <root>/<name>`` creates an entry with ``generation`` (RO), ``provider`` (RO),
  ``privlevel`` (WO, ASCII decimal, floor..3 else EINVAL), ``privlevel_floor`` (RO),
  ``inblob`` (WO binary, at most 64 bytes else EFBIG), ``outblob`` and ``auxblob`` (RO binary);
  with no provider registered, ``mkdir`` fails with ENXIO;
* each ``privlevel`` write and each closed ``inblob`` write advance ``generation``;
* the first read of ``outblob``/``auxblob`` after a write calls the *generator* (playing the
  firmware) with ``(inblob, privlevel)``; it returns ``(outblob, auxblob)`` or raises OSError,
  whose errno the read fails with; no ``inblob``, or one that is not 64 bytes, is EINVAL;
* opening a read-only attribute for writing (or the reverse) is EACCES; creating files is EACCES.

Production code runs unchanged against the mount point: there is no test hook in skr.
:meth:`TsmConfigfs.inject_foreign_writes` plays *another agent* writing ``inblob`` into the same
entry between our write and our read, which is what ``generation`` exists to detect.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Generator = Callable[[bytes, int], tuple[bytes, bytes]]

FUSE_LOOKUP = 1
FUSE_FORGET = 2
FUSE_GETATTR = 3
FUSE_SETATTR = 4
FUSE_MKNOD = 8
FUSE_MKDIR = 9
FUSE_UNLINK = 10
FUSE_RMDIR = 11
FUSE_OPEN = 14
FUSE_READ = 15
FUSE_WRITE = 16
FUSE_RELEASE = 18
FUSE_FLUSH = 25
FUSE_INIT = 26
FUSE_OPENDIR = 27
FUSE_READDIR = 28
FUSE_RELEASEDIR = 29
FUSE_ACCESS = 34
FUSE_CREATE = 35
FUSE_INTERRUPT = 36
FUSE_BATCH_FORGET = 42
_NO_REPLY = frozenset({FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT})

FOPEN_DIRECT_IO = 1
IN_HEADER = struct.Struct("<IIQQIIIHH")  # fuse_in_header (40 bytes)
OUT_HEADER = struct.Struct("<IiQ")  # fuse_out_header (16 bytes)
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr (88 bytes)
MAX_WRITE = 128 * 1024
ROOT_ID = 1
INBLOB_MAX = 64  # TSM_INBLOB_MAX
PRIVLEVEL_MAX = 3  # TSM_PRIVLEVEL_MAX

MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MNT_DETACH = 2

# attribute -> (readable, writable, binary)
ATTRIBUTES: dict[str, tuple[bool, bool, bool]] = {
    "generation": (True, False, False),
    "provider": (True, False, False),
    "privlevel": (False, True, False),
    "privlevel_floor": (True, False, False),
    "inblob": (False, True, True),
    "outblob": (True, False, True),
    "auxblob": (True, False, True),
}


class FuseUnavailable(RuntimeError):
    """/dev/fuse is missing or the kernel refused the mount."""


@dataclass
class _Entry:
    name: str
    nodeid: int
    attribute_ids: dict[str, int]
    write_generation: int = 0
    read_generation: int = 0
    privlevel: int = 0
    inblob: bytes = b""
    outblob: bytes | None = None
    auxblob: bytes = b""
    removed: bool = False


@dataclass
class _Handle:
    entry: _Entry
    attribute: str
    write_buffer: bytearray = field(default_factory=bytearray)
    wrote: bool = False
    snapshot: bytes | None = None


@dataclass
class TsmLog:
    generated: list[tuple[bytes, int]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


class TsmConfigfs:
    """Mount at ``mountpoint`` (an empty directory), serve until :meth:`close`. Use as a context manager."""

    def __init__(
        self,
        mountpoint: Path,
        generator: Generator,
        *,
        provider: str | None = "sev_guest",
        privlevel_floor: int = 0,
    ) -> None:
        self.mountpoint = Path(mountpoint)
        self._generator = generator
        self._provider = provider
        self._floor = privlevel_floor
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._nodes: dict[int, tuple[_Entry, str | None]] = {}
        self._handles: dict[int, _Handle] = {}
        self._next_id = ROOT_ID + 1
        self._foreign_writes = 0
        self._stop = threading.Event()
        self._fd = -1
        self._thread: threading.Thread | None = None
        self.log = TsmLog()

    # -- lifecycle --

    def __enter__(self) -> TsmConfigfs:
        self.mount()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mount(self) -> None:
        try:
            self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise FuseUnavailable(f"cannot open /dev/fuse: {exc.strerror}") from None
        libc = ctypes.CDLL(None, use_errno=True)
        options = f"fd={self._fd},rootmode=40755,user_id={os.getuid()},group_id={os.getgid()},allow_other"
        if (
            libc.mount(
                b"skr-tsm-emulator",
                os.fsencode(self.mountpoint),
                b"fuse.skr-tsm",
                ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC),
                options.encode(),
            )
            != 0
        ):
            code = ctypes.get_errno()
            os.close(self._fd)
            self._fd = -1
            raise FuseUnavailable(f"mounting a FUSE filesystem failed: {os.strerror(code)}")
        self._thread = threading.Thread(target=self._serve, name="tsm-configfs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._fd < 0:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.umount2(os.fsencode(self.mountpoint), MNT_DETACH)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        os.close(self._fd)
        self._fd = -1

    # -- knobs for tests --

    def inject_foreign_writes(self, count: int) -> None:
        """The next ``count`` report generations see another agent's inblob written just before."""
        with self._lock:
            self._foreign_writes = count

    def entries(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    # -- the FUSE loop --

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            try:
                request = os.read(self._fd, MAX_WRITE + 4096)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                    continue
                return  # ENODEV: unmounted
            self._dispatch(request)

    def _dispatch(self, request: bytes) -> None:
        _length, opcode, unique, nodeid, _uid, _gid, _pid, _ext, _pad = IN_HEADER.unpack_from(request)
        body = request[IN_HEADER.size :]
        if opcode in _NO_REPLY:
            return
        try:
            with self._lock:
                payload = self._handle(opcode, nodeid, body)
            error = 0
        except OSError as exc:
            payload, error = b"", -(exc.errno or errno.EIO)
        except Exception as exc:  # a bug here must fail the test, never leave a caller hanging
            self.log.errors.append(exc)
            payload, error = b"", -errno.EIO
        with contextlib.suppress(OSError):  # ENOENT: the request was interrupted
            os.write(self._fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), error, unique) + payload)

    def _handle(self, opcode: int, nodeid: int, body: bytes) -> bytes:
        if opcode == FUSE_INIT:
            _major, _minor, readahead, _flags = struct.unpack_from("<IIII", body)
            return struct.pack("<IIIIHHIIHHI7I", 7, 31, readahead, 0, 16, 12, MAX_WRITE, 1, 0, 0, 0, *[0] * 7)
        if opcode == FUSE_LOOKUP:
            return self._entry_out(self._lookup(nodeid, _name(body)))
        if opcode in (FUSE_GETATTR, FUSE_SETATTR):
            return struct.pack("<QII", 0, 0, 0) + self._attr(nodeid)
        if opcode == FUSE_MKDIR:
            return self._entry_out(self._mkdir(nodeid, _name(body[8:])))
        if opcode == FUSE_RMDIR:
            self._rmdir(nodeid, _name(body))
            return b""
        if opcode in (FUSE_MKNOD, FUSE_CREATE, FUSE_UNLINK):
            raise OSError(errno.EACCES, "configfs items are made with mkdir only")
        if opcode == FUSE_OPEN:
            (flags,) = struct.unpack_from("<I", body)
            return struct.pack("<QII", self._open(nodeid, flags), FOPEN_DIRECT_IO, 0)
        if opcode == FUSE_READ:
            handle_id, offset, size = struct.unpack_from("<QQI", body)
            return self._read(handle_id, offset, size)
        if opcode == FUSE_WRITE:
            handle_id, offset, size = struct.unpack_from("<QQI", body)
            data = body[40 : 40 + size]
            return struct.pack("<II", self._write(handle_id, offset, data), 0)
        if opcode == FUSE_FLUSH:
            (handle_id,) = struct.unpack_from("<Q", body)
            self._flush(handle_id)
            return b""
        if opcode == FUSE_RELEASE:
            (handle_id,) = struct.unpack_from("<Q", body)
            self._handles.pop(handle_id, None)
            return b""
        if opcode == FUSE_OPENDIR:
            return struct.pack("<QII", 0, 0, 0)
        if opcode == FUSE_READDIR:
            _fh, offset, size = struct.unpack_from("<QQI", body)
            return self._readdir(nodeid, offset, size)
        if opcode in (FUSE_RELEASEDIR, FUSE_ACCESS):
            return b""
        raise OSError(errno.ENOSYS, "not implemented")

    # -- the namespace --

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _node(self, nodeid: int) -> tuple[_Entry, str | None]:
        found = self._nodes.get(nodeid)
        if found is None or found[0].removed:
            raise OSError(errno.ENOENT, "stale node")
        return found

    def _lookup(self, parent: int, name: str) -> int:
        if parent == ROOT_ID:
            entry = self._entries.get(name)
            if entry is None:
                raise OSError(errno.ENOENT, name)
            return entry.nodeid
        entry, attribute = self._node(parent)
        if attribute is not None or name not in entry.attribute_ids:
            raise OSError(errno.ENOENT, name)
        return entry.attribute_ids[name]

    def _mkdir(self, parent: int, name: str) -> int:
        if parent != ROOT_ID:
            raise OSError(errno.EPERM, "report entries do not nest")
        if name in self._entries:
            raise OSError(errno.EEXIST, name)
        if self._provider is None:
            raise OSError(errno.ENXIO, "no TSM provider registered")
        entry = _Entry(name=name, nodeid=self._new_id(), attribute_ids={})
        for attribute in ATTRIBUTES:
            entry.attribute_ids[attribute] = self._new_id()
            self._nodes[entry.attribute_ids[attribute]] = (entry, attribute)
        self._nodes[entry.nodeid] = (entry, None)
        self._entries[name] = entry
        self.log.created.append(name)
        return entry.nodeid

    def _rmdir(self, parent: int, name: str) -> None:
        if parent != ROOT_ID or name not in self._entries:
            raise OSError(errno.ENOENT, name)
        entry = self._entries.pop(name)
        entry.removed = True
        self.log.removed.append(name)

    def _attr(self, nodeid: int) -> bytes:
        if nodeid == ROOT_ID:
            mode, size = stat.S_IFDIR | 0o755, 0
        else:
            _entry, attribute = self._node(nodeid)
            if attribute is None:
                mode, size = stat.S_IFDIR | 0o755, 0
            else:
                readable, writable, binary = ATTRIBUTES[attribute]
                mode = stat.S_IFREG | (0o444 if readable else 0) | (0o200 if writable else 0)
                size = 0 if binary else 4096
        return ATTR.pack(nodeid, size, 0, 0, 0, 0, 0, 0, 0, mode, 1, os.getuid(), os.getgid(), 0, 4096, 0)

    def _entry_out(self, nodeid: int) -> bytes:
        return struct.pack("<QQQQII", nodeid, 0, 0, 0, 0, 0) + self._attr(nodeid)

    def _readdir(self, nodeid: int, offset: int, size: int) -> bytes:
        if nodeid == ROOT_ID:
            names = [(entry.nodeid, name, stat.S_IFDIR) for name, entry in sorted(self._entries.items())]
        else:
            entry, attribute = self._node(nodeid)
            if attribute is not None:
                raise OSError(errno.ENOTDIR, "not a directory")
            names = [(entry.attribute_ids[a], a, stat.S_IFREG) for a in ATTRIBUTES]
        out = bytearray()
        for index, (ino, name, kind) in enumerate(names[offset:], start=offset + 1):
            raw = name.encode()
            record = struct.pack("<QQII", ino, index, len(raw), kind >> 12) + raw
            record += bytes(-len(record) % 8)
            if len(out) + len(record) > size:
                break
            out += record
        return bytes(out)

    # -- attribute I/O, as configfs and tsm.c do it --

    def _open(self, nodeid: int, flags: int) -> int:
        entry, attribute = self._node(nodeid)
        if attribute is None:
            raise OSError(errno.EISDIR, "a report entry is a directory")
        readable, writable, _binary = ATTRIBUTES[attribute]
        access = flags & os.O_ACCMODE
        if (access in (os.O_RDONLY, os.O_RDWR) and not readable) or (
            access in (os.O_WRONLY, os.O_RDWR) and not writable
        ):
            raise OSError(errno.EACCES, f"{attribute} does not support that access")
        handle_id = self._new_id()
        self._handles[handle_id] = _Handle(entry=entry, attribute=attribute)
        return handle_id

    def _handle_for(self, handle_id: int) -> _Handle:
        handle = self._handles.get(handle_id)
        if handle is None:
            raise OSError(errno.EBADF, "unknown handle")
        return handle

    def _write(self, handle_id: int, offset: int, data: bytes) -> int:
        handle = self._handle_for(handle_id)
        entry = handle.entry
        if handle.attribute == "inblob":  # binary: buffered, committed on close
            if offset + len(data) > INBLOB_MAX:
                raise OSError(errno.EFBIG, "inblob takes at most 64 bytes")
            handle.write_buffer[offset : offset + len(data)] = data
            handle.wrote = True
            return len(data)
        # privlevel: a text attribute, stored on every write (kstrtouint, base 0)
        try:
            value = int(data.decode("ascii").strip(), 0)
        except (UnicodeDecodeError, ValueError):
            raise OSError(errno.EINVAL, "privlevel is a decimal number") from None
        if not self._floor <= value <= PRIVLEVEL_MAX:
            raise OSError(errno.EINVAL, "privlevel out of range")
        entry.write_generation += 1
        entry.privlevel = value
        return len(data)

    def _flush(self, handle_id: int) -> None:
        # configfs commits a binary attribute when the file is released; FUSE's RELEASE is
        # asynchronous while FLUSH is part of close(), so the commit happens here.
        handle = self._handles.get(handle_id)
        if handle is None or not handle.wrote:
            return
        handle.wrote = False
        handle.entry.write_generation += 1
        handle.entry.inblob = bytes(handle.write_buffer)

    def _read(self, handle_id: int, offset: int, size: int) -> bytes:
        handle = self._handle_for(handle_id)
        if offset == 0 or handle.snapshot is None:
            handle.snapshot = self._show(handle.entry, handle.attribute)
        return handle.snapshot[offset : offset + size]

    def _show(self, entry: _Entry, attribute: str) -> bytes:
        if attribute == "generation":
            return f"{entry.write_generation}\n".encode()
        if attribute == "provider":
            return f"{self._provider}\n".encode()
        if attribute == "privlevel_floor":
            return f"{self._floor}\n".encode()
        # outblob / auxblob: tsm_report_read()
        if not entry.inblob:
            raise OSError(errno.EINVAL, "no inblob written")
        if entry.outblob is None or entry.read_generation != entry.write_generation or self._foreign_writes:
            if self._foreign_writes:
                self._foreign_writes -= 1
                entry.inblob = bytes(reversed(entry.inblob))  # another agent's nonce
                entry.write_generation += 1
            if len(entry.inblob) != INBLOB_MAX:  # sev_report_new wants exactly 64 bytes
                raise OSError(errno.EINVAL, "inblob must be 64 bytes")
            entry.outblob, entry.auxblob = None, b""
            outblob, auxblob = self._generator(entry.inblob, entry.privlevel)
            self.log.generated.append((entry.inblob, entry.privlevel))
            entry.outblob, entry.auxblob = outblob, auxblob
            entry.read_generation = entry.write_generation
        return entry.outblob if attribute == "outblob" else entry.auxblob


def _name(body: bytes) -> str:
    return body.split(b"\0", 1)[0].decode()

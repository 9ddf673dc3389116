"""Emulated /dev/sev-guest for the binding's tests: real ioctl syscalls, answered by a seccomp supervisor.

There is no SEV-SNP hardware here, yet the compiled binding must be exercised through the real
``ioctl(2)`` syscall, with the real structures in real process memory. So:

1. :func:`run_in_child` starts a child Python process (this file with ``--child``). The child
   installs a seccomp filter with ``SECCOMP_FILTER_FLAG_NEW_LISTENER`` that turns
   ``ioctl(fd, SNP_GET_REPORT | SNP_GET_DERIVED_KEY | SNP_GET_EXT_REPORT, ...)`` into a user
   notification (everything else is allowed), and passes the listener fd to the parent over a
   socketpair (SCM_RIGHTS).
2. The child then runs the steps it was given (JSON on stdin) against skr's providers, whose
   compiled C shim opens the "device" (an ordinary file) and issues the real ioctl.
3. The parent's :class:`SevGuestSupervisor` thread receives each notification
   (``SECCOMP_IOCTL_NOTIF_RECV``), plays the kernel's sev-guest driver: it checks the fd refers to
   the emulated device path, reads ``struct snp_guest_request_ioctl`` and the request from
   ``/proc/PID/mem``, re-checks ``SECCOMP_IOCTL_NOTIF_ID_VALID``, asks a pluggable *responder*
   (playing firmware + hypervisor) for the outcome, writes the response, exitinfo2 and
   ``certs_len`` back into the child's memory like ``drivers/virt/coco/sev-guest`` does, and
   answers with ``SECCOMP_IOCTL_NOTIF_SEND`` (``-errno``, or 0).

The responder is ``(command, request) -> Reply``; a ``Reply`` with ``passthrough=True`` lets the
real kernel execute the ioctl on the real file (``SECCOMP_USER_NOTIF_FLAG_CONTINUE``), which for an
ordinary file is a genuine ``ENOTTY``. The kernel-side rules emulated here: ``msg_version`` 0 is
EINVAL; an extended request's ``certs_len`` must be page-aligned and at most 16 KiB
(``SEV_FW_BLOB_MAX_SIZE``) else EINVAL; a certificate table larger than the buffer yields EIO with
``SNP_GUEST_VMM_ERR_INVALID_LEN`` and the needed length in ``certs_len``; exitinfo2 is copied back
only when non-zero.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import json
import os
import platform
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- ABI constants (linux/ioctl.h, linux/seccomp.h, linux/sev-guest.h) ---------------------------

_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


GUEST_REQUEST_SIZE = 32  # struct snp_guest_request_ioctl
REPORT_REQ_SIZE = 96  # struct snp_report_req
EXT_REPORT_REQ_SIZE = 112  # struct snp_ext_report_req
DERIVED_KEY_REQ_SIZE = 32  # struct snp_derived_key_req
REPORT_RESP_SIZE = 4000  # struct snp_report_resp
DERIVED_KEY_RESP_SIZE = 64  # struct snp_derived_key_resp
SEV_FW_BLOB_MAX_SIZE = 16 * 1024
PAGE_SIZE = 4096
VMM_ERR_INVALID_LEN = 1
VMM_ERR_BUSY = 2


class Command(enum.IntEnum):
    """The three sev-guest ioctls, by request number."""

    REPORT = _ioc(_IOC_READ | _IOC_WRITE, "S", 0, GUEST_REQUEST_SIZE)
    DERIVED_KEY = _ioc(_IOC_READ | _IOC_WRITE, "S", 1, GUEST_REQUEST_SIZE)
    EXT_REPORT = _ioc(_IOC_READ | _IOC_WRITE, "S", 2, GUEST_REQUEST_SIZE)


SECCOMP_NOTIF_SIZE = 80  # struct seccomp_notif: id u64, pid u32, flags u32, seccomp_data (64)
SECCOMP_NOTIF_RESP_SIZE = 24  # struct seccomp_notif_resp: id u64, val s64, error s32, flags u32
SECCOMP_DATA_SIZE = 64
SECCOMP_IOCTL_NOTIF_RECV = _ioc(_IOC_READ | _IOC_WRITE, "!", 0, SECCOMP_NOTIF_SIZE)
SECCOMP_IOCTL_NOTIF_SEND = _ioc(_IOC_READ | _IOC_WRITE, "!", 1, SECCOMP_NOTIF_RESP_SIZE)
SECCOMP_IOCTL_NOTIF_ID_VALID = _ioc(_IOC_WRITE, "!", 2, 8)
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_NOTIF_SIZES = 3
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
PR_SET_NO_NEW_PRIVS = 38

# machine -> (AUDIT_ARCH_*, __NR_ioctl, __NR_seccomp)
_ARCHES = {
    "x86_64": (0xC000003E, 16, 317),
    "aarch64": (0xC00000B7, 29, 277),
}


def arch_supported() -> bool:
    return platform.machine() in _ARCHES


# --- what the responder sees and answers ---------------------------------------------------------


@dataclass(frozen=True)
class ReportRequest:
    """SNP_GET_REPORT / SNP_GET_EXT_REPORT input as the kernel would read it."""

    msg_version: int
    user_data: bytes
    vmpl: int
    reserved: bytes
    certs_len: int = 0  # EXT_REPORT only: the buffer the caller offered
    certs_address: int = 0


@dataclass(frozen=True)
class DerivedKeyRequest:
    """SNP_GET_DERIVED_KEY input."""

    msg_version: int
    root_key_select: int
    reserved: int
    guest_field_select: int
    vmpl: int
    guest_svn: int
    tcb_version: int


Request = ReportRequest | DerivedKeyRequest


@dataclass(frozen=True)
class Reply:
    """What "firmware + hypervisor" did with one request.

    ``errno`` non-zero fails the ioctl with that errno (exitinfo2 = fw_error | vmm_error << 32).
    Otherwise ``message`` (MSG_REPORT_RSP / MSG_KEY_RSP) is copied to the response buffer and, for
    an extended report, ``certificates`` to the caller's certificate buffer (or INVALID_LEN when it
    does not fit, exactly like the kernel). ``passthrough`` runs the real syscall instead.
    """

    errno: int = 0
    fw_error: int = 0
    vmm_error: int = 0
    message: bytes = b""
    certificates: bytes = b""
    passthrough: bool = False


Responder = Callable[[Command, Request], Reply]


def report_response(report: bytes, *, status: int = 0) -> bytes:
    """A MSG_REPORT_RSP: status u32, report_size u32, 24 reserved bytes, the report."""
    return struct.pack("<II", status, len(report)) + bytes(24) + report


def key_response(key: bytes, *, status: int = 0) -> bytes:
    """A MSG_KEY_RSP: status u32, 28 reserved bytes, the 32-byte key."""
    return struct.pack("<I", status) + bytes(28) + key


# --- the supervisor (runs in the test process) ----------------------------------------------------


@dataclass
class SupervisorLog:
    calls: list[tuple[Command, Request]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    handled: int = 0


class SevGuestSupervisor:
    """Answers the child's intercepted ioctls; one thread, one child."""

    def __init__(self, listener: int, pid: int, device_path: str, responder: Responder) -> None:
        self._listener = listener
        self._pid = pid
        self._device = os.path.realpath(device_path)
        self._responder = responder
        self._stop = threading.Event()
        self._mem: int | None = None
        self.log = SupervisorLog()
        self._thread = threading.Thread(target=self._serve, name="sevguest-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._mem is not None:
            os.close(self._mem)
            self._mem = None
        os.close(self._listener)

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        while not self._stop.is_set():
            events = poller.poll(50)
            for _fd, mask in events:
                if mask & select.POLLIN:
                    self._handle_one()
                elif mask & (select.POLLHUP | select.POLLERR):
                    return

    def _handle_one(self) -> None:
        buffer = bytearray(SECCOMP_NOTIF_SIZE)
        try:
            fcntl.ioctl(self._listener, SECCOMP_IOCTL_NOTIF_RECV, buffer, True)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR):  # the caller went away (signal, exit)
                return
            raise
        notif_id, pid, _flags, _nr, _arch, _ip = struct.unpack_from("<QIIiIQ", buffer, 0)
        args = struct.unpack_from("<6Q", buffer, 32)
        try:
            error, value, flags = self._emulate(notif_id, pid, args)
        except BaseException as exc:  # a broken responder must fail the test, not hang the child
            self.log.errors.append(exc)
            error, value, flags = -errno.ENOSYS, 0, 0
        response = bytearray(struct.pack("<QqiI", notif_id, value, error, flags))
        with contextlib.suppress(OSError):  # ENOENT: the caller was interrupted meanwhile
            fcntl.ioctl(self._listener, SECCOMP_IOCTL_NOTIF_SEND, response, True)
        self.log.handled += 1

    # -- the kernel's part --

    def _emulate(self, notif_id: int, pid: int, args: tuple[int, ...]) -> tuple[int, int, int]:
        fd, command_number, argp = args[0], args[1] & 0xFFFFFFFF, args[2]
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            target = ""
        if target != self._device:
            return 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE  # not our device: the real kernel decides
        if self._mem is None:
            self._mem = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        # The pid could have been reused between RECV and the open above: re-check the id.
        try:
            fcntl.ioctl(self._listener, SECCOMP_IOCTL_NOTIF_ID_VALID, bytearray(struct.pack("<Q", notif_id)), True)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # the caller is gone; nobody is waiting for an answer
                return -errno.EINTR, 0, 0
            raise

        try:
            guest = self._read(argp, GUEST_REQUEST_SIZE)
        except OSError:
            return -errno.EFAULT, 0, 0
        msg_version, req_data, resp_data, _exitinfo2 = struct.unpack("<B7xQQQ", guest)
        if msg_version == 0:
            return -errno.EINVAL, 0, 0
        command = Command(command_number)
        if not req_data or not resp_data:
            return self._fail(argp, errno.EINVAL, 0xFF)
        try:
            request = self._read_request(command, req_data, msg_version)
        except OSError:
            return self._fail(argp, errno.EFAULT, 0xFF)

        if (
            isinstance(request, ReportRequest)
            and command is Command.EXT_REPORT
            and (request.certs_len > SEV_FW_BLOB_MAX_SIZE or request.certs_len % PAGE_SIZE)
        ):
            return self._fail(argp, errno.EINVAL, 0xFF)

        self.log.calls.append((command, request))
        reply = self._responder(command, request)
        if reply.passthrough:
            return 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE
        if reply.errno:
            return self._fail(argp, reply.errno, reply.fw_error | reply.vmm_error << 32)

        if isinstance(request, ReportRequest) and command is Command.EXT_REPORT and request.certs_len:
            if len(reply.certificates) > request.certs_len:
                needed = -(-len(reply.certificates) // PAGE_SIZE) * PAGE_SIZE
                self._write(req_data + 104, struct.pack("<I", needed))
                return self._fail(argp, errno.EIO, VMM_ERR_INVALID_LEN << 32)
            self._write(request.certs_address, reply.certificates.ljust(request.certs_len, b"\0"))
        size = DERIVED_KEY_RESP_SIZE if command is Command.DERIVED_KEY else REPORT_RESP_SIZE
        self._write(resp_data, reply.message[:size].ljust(size, b"\0"))
        return 0, 0, 0

    def _fail(self, argp: int, code: int, exitinfo2: int) -> tuple[int, int, int]:
        if exitinfo2:  # sev-guest.c copies the struct back only when exitinfo2 is non-zero
            self._write(argp + 24, struct.pack("<Q", exitinfo2))
        return -code, 0, 0

    def _read_request(self, command: Command, address: int, msg_version: int) -> Request:
        if command is Command.DERIVED_KEY:
            raw = self._read(address, DERIVED_KEY_REQ_SIZE)
            root, reserved, fields, vmpl, svn, tcb = struct.unpack("<IIQIIQ", raw)
            return DerivedKeyRequest(msg_version, root, reserved, fields, vmpl, svn, tcb)
        size = EXT_REPORT_REQ_SIZE if command is Command.EXT_REPORT else REPORT_REQ_SIZE
        raw = self._read(address, size)
        (vmpl,) = struct.unpack_from("<I", raw, 64)
        certs_address, certs_len = (0, 0)
        if command is Command.EXT_REPORT:
            certs_address, certs_len = struct.unpack_from("<QI", raw, 96)
            if not certs_address:
                certs_len = 0
        return ReportRequest(msg_version, raw[:64], vmpl, raw[68:96], certs_len, certs_address)

    def _read(self, address: int, size: int) -> bytes:
        assert self._mem is not None
        data = os.pread(self._mem, size, address)
        if len(data) != size:
            raise OSError(errno.EFAULT, "short read of the caller's memory")
        return data

    def _write(self, address: int, data: bytes) -> None:
        assert self._mem is not None
        if os.pwrite(self._mem, data, address) != len(data):
            raise OSError(errno.EFAULT, "short write to the caller's memory")


# --- running a child ------------------------------------------------------------------------------


class SeccompUnavailable(RuntimeError):
    """The kernel refused to create a seccomp listener (the only reason to skip these tests)."""


@dataclass
class ChildRun:
    results: list[dict[str, Any]]
    log: SupervisorLog
    stderr: str


def run_in_child(
    responder: Responder, steps: list[dict[str, Any]], *, device_path: str | Path, timeout: float = 120.0
) -> ChildRun:
    """Run ``steps`` in a seccomp-filtered child against the emulated device at ``device_path``."""
    import skr  # the child must import the very skr (and compiled binding) this process uses

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(skr.__file__).resolve().parent.parent), *filter(None, [env.get("PYTHONPATH")])]
    )
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with parent_sock:
        try:
            process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(child_sock.fileno())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(child_sock.fileno(),),
                env=env,
            )
        finally:
            child_sock.close()
        parent_sock.settimeout(timeout)
        try:
            message, fds, _flags, _addr = socket.recv_fds(parent_sock, 4096, 1)
        except (TimeoutError, OSError):
            process.kill()
            _, err = process.communicate()
            raise RuntimeError(f"the emulator child sent no listener: {err.decode(errors='replace')}") from None
        if not fds:
            process.kill()
            process.communicate()
            raise SeccompUnavailable(message.decode(errors="replace") or "no listener received")
    supervisor = SevGuestSupervisor(fds[0], process.pid, str(device_path), responder)
    supervisor.start()
    try:
        out, err = process.communicate(json.dumps(steps).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise RuntimeError(f"the emulator child timed out: {err.decode(errors='replace')}") from None
    finally:
        supervisor.stop()
    if supervisor.log.errors:
        raise supervisor.log.errors[0]
    if process.returncode != 0:
        raise RuntimeError(f"the emulator child failed ({process.returncode}): {err.decode(errors='replace')}")
    return ChildRun(results=json.loads(out), log=supervisor.log, stderr=err.decode(errors="replace"))


def probe_seccomp_listener() -> str | None:
    """``None`` when seccomp user notification works here, else the reason it does not."""
    if not arch_supported():
        return f"seccomp emulation supports x86_64 and aarch64, not {platform.machine()}"
    try:
        run_in_child(lambda command, request: Reply(passthrough=True), [], device_path=os.devnull, timeout=60)
    except SeccompUnavailable as exc:
        return f"the kernel refused a seccomp listener: {exc}"
    return None


# --- the child side -------------------------------------------------------------------------------


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _install_listener() -> int:
    """Install the filter in this process; returns the listener fd."""
    audit_arch, nr_ioctl, nr_seccomp = _ARCHES[platform.machine()]
    ld_abs, jeq_k, ret_k = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    program = [
        (ld_abs, 0, 0, 4),  # 0: A = seccomp_data.arch
        (jeq_k, 0, 6, audit_arch),  # 1: other arch -> allow
        (ld_abs, 0, 0, 0),  # 2: A = seccomp_data.nr
        (jeq_k, 0, 4, nr_ioctl),  # 3: not ioctl -> allow
        (ld_abs, 0, 0, 24),  # 4: A = low half of args[1] (the request number)
        (jeq_k, 3, 0, Command.REPORT),  # 5
        (jeq_k, 2, 0, Command.DERIVED_KEY),  # 6
        (jeq_k, 1, 0, Command.EXT_REPORT),  # 7
        (ret_k, 0, 0, SECCOMP_RET_ALLOW),  # 8
        (ret_k, 0, 0, SECCOMP_RET_USER_NOTIF),  # 9
    ]
    filters = (_SockFilter * len(program))(*[_SockFilter(*insn) for insn in program])
    fprog = _SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    fd = libc.syscall(
        nr_seccomp,
        ctypes.c_ulong(SECCOMP_SET_MODE_FILTER),
        ctypes.c_ulong(SECCOMP_FILTER_FLAG_NEW_LISTENER),
        ctypes.byref(fprog),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"seccomp(SECCOMP_SET_MODE_FILTER, NEW_LISTENER): {os.strerror(code)}")
    sizes = (ctypes.c_uint16 * 3)()
    if libc.syscall(nr_seccomp, ctypes.c_ulong(SECCOMP_GET_NOTIF_SIZES), ctypes.c_ulong(0), sizes) == 0 and (
        sizes[0] > SECCOMP_NOTIF_SIZE or sizes[1] > SECCOMP_NOTIF_RESP_SIZE or sizes[2] != SECCOMP_DATA_SIZE
    ):
        os.close(int(fd))
        raise OSError(errno.EPROTO, f"unexpected seccomp notification sizes {list(sizes)}")
    return int(fd)


def _error_result(exc: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "error": type(exc).__name__,
        "code": getattr(exc, "code", None),
        "message": getattr(exc, "message", str(exc)),
        "errno": getattr(exc, "errno", None),
        "fw_error": getattr(exc, "fw_error", None),
        "vmm_error": getattr(exc, "vmm_error", None),
        "tried": list(getattr(exc, "tried", ())),
    }


def _run_step(step: dict[str, Any], sleeps: list[float]) -> dict[str, Any]:
    from skr.errors import SkrError
    from skr.snp import _native
    from skr.snp.device import SevGuestDevice

    op = step["op"]
    if op == "fd_count":
        return {"ok": True, "fds": len(os.listdir("/proc/self/fd"))}
    if op == "repeat":
        outcomes: dict[str, int] = {}
        for _ in range(int(step["count"])):
            for inner in step["steps"]:
                result = _run_step(inner, sleeps)
                outcome = "ok" if result["ok"] else str(result["error"])
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return {"ok": True, "outcomes": outcomes}
    if op == "gil_probe":
        return _gil_probe(step, sleeps)
    device = SevGuestDevice(step["path"], sleep=sleeps.append, **step.get("device", {}))
    try:
        if op == "report":
            evidence = device.get_report(
                bytes.fromhex(step["report_data"]),
                vmpl=step.get("vmpl", 0),
                with_certificates=step.get("with_certificates", True),
            )
            return {
                "ok": True,
                "report": evidence.report.hex(),
                "certificates": evidence.certificates.hex(),
                "provider": evidence.provider,
            }
        if op == "derived_key":
            key = device.get_derived_key(**step.get("kwargs", {}))
            return {"ok": True, "key": key.reveal().hex(), "repr": repr(key)}
        if op == "native_ext_report":
            reply = _native.get_ext_report(
                step["path"], bytes.fromhex(step["report_data"]), step.get("vmpl", 0), step["certs_buffer"]
            )
            return {
                "ok": True,
                "stage": reply.status.stage.name,
                "errno": reply.status.errno,
                "fw_error": reply.status.fw_error,
                "vmm_error": reply.status.vmm_error,
                "certs_len": reply.certs_len,
                "message": reply.message.hex(),
            }
    except SkrError as exc:
        return _error_result(exc)
    raise ValueError(f"unknown step {op!r}")


def _gil_probe(step: dict[str, Any], sleeps: list[float]) -> dict[str, Any]:
    """Call the device while another thread must run: it answers the supervisor's signal file.

    The supervisor creates ``seen`` only while this process's main thread is blocked inside the
    ioctl, then waits for ``ack``. Only a thread that can take the GIL meanwhile can write it.
    """
    seen, ack = Path(step["seen"]), Path(step["ack"])

    def helper() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if seen.exists():
                ack.write_text("ack")
                return
            time.sleep(0.001)

    thread = threading.Thread(target=helper)
    thread.start()
    try:
        return _run_step({**step, "op": "report"}, sleeps)
    finally:
        thread.join()


def _child_main(sock_fd: int) -> int:
    sock = socket.socket(fileno=sock_fd)
    try:
        listener = _install_listener()
    except OSError as exc:
        sock.sendall(str(exc).encode())
        sock.close()
        return 3
    socket.send_fds(sock, [b"listener"], [listener])
    os.close(listener)
    sock.close()
    steps = json.loads(sys.stdin.read())
    sleeps: list[float] = []
    results = []
    for step in steps:
        result = _run_step(step, sleeps)
        result["sleeps"] = list(sleeps)
        sleeps.clear()
        results.append(result)
    sys.stdout.write(json.dumps(results))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(_child_main(int(sys.argv[2])))
    sys.exit("usage: sevguest_emulator.py --child FD (started by run_in_child)")

"""The GPU fence on cgroup v2: a BPF device program on the job's cgroup.

cgroup v2 has no ``devices`` controller: which devices a cgroup's processes may open is
decided by ``BPF_PROG_TYPE_CGROUP_DEVICE`` programs attached to it (what runc and systemd
do). ``fence`` loads one that denies the listed character devices (every access: read,
write, mknod) and allows everything else, and attaches it to the job's cgroup with
``BPF_F_ALLOW_MULTI`` (programs attached above, systemd's say, still apply: every one must
allow). The kernel checks it at every ``open`` of a device node, whatever its path, so a
job that unsets ``CUDA_VISIBLE_DEVICES`` or makes its own node (``mknod``) still cannot
open a GPU it was not given. The attachment lives as long as the cgroup; nothing to undo.

The program is assembled here (a few instructions per denied device) and handed to the
``bpf`` system call through ``ctypes``: no compiler, no libbpf. It needs ``CAP_BPF`` and
``CAP_SYS_ADMIN`` (root) and a kernel with ``CONFIG_CGROUP_BPF`` (Linux 4.15+).

Standard library only: the supervisor imports it and must start fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from collections.abc import Iterable, Sequence
from typing import Any

SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
#: ``struct bpf_cgroup_dev_ctx``'s device types.
DEV_BLOCK, DEV_CHAR = 1, 2
_ATTR_SIZE = 128
#: (type "c" or "b", major, minor)
Device = tuple[str, int, int]


class BpfUnavailable(Exception):
    """A device program cannot be loaded or attached here; the message says why."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


# The few opcodes used (BPF_CLASS | BPF_OP | BPF_SRC).
_LDXW = 0x61  # r_dst = *(u32 *)(r_src + off)
_AND64_K = 0x57  # r_dst &= imm
_JNE_K = 0x55  # if r_dst != imm: pc += off
_JA = 0x05  # pc += off
_MOV64_K = 0xB7  # r_dst = imm
_EXIT = 0x95


def device_program(deny: Iterable[Device]) -> bytes:
    """The program: 0 (deny) for an access to any device of ``deny``, else 1 (allow).

    ``r1`` is ``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor}``, whose
    ``access_type`` is ``access << 16 | type``."""
    by_type: dict[int, list[tuple[int, int]]] = {}
    for kind, major, minor in deny:
        by_type.setdefault(DEV_CHAR if kind == "c" else DEV_BLOCK, []).append(
            (int(major), int(minor)))
    code = [_insn(_LDXW, 2, 1, 0), _insn(_AND64_K, 2, imm=0xFFFF),
            _insn(_LDXW, 3, 1, 4), _insn(_LDXW, 4, 1, 8)]
    # Per type: "if type != T: skip its block"; per device: "if major == M and minor == m:
    # deny". The allow and deny exits follow the blocks.
    blocks = []
    for kind, devices in sorted(by_type.items()):
        block = []
        for major, minor in devices:
            block.append((_JNE_K, 3, 2, major))  # not this major: next device
            block.append((_JNE_K, 4, 1, minor))  # not this minor: next device
            block.append((_JA, 0, None, 0))  # to the deny exit (offset filled in below)
        blocks.append((kind, block))
    body: list[tuple[int, int, int | None, int]] = []
    for kind, block in blocks:
        body.append((_JNE_K, 2, len(block), kind))
        body.extend(block)
    allow_at = len(body)  # then: r0 = 1; exit; r0 = 0; exit
    deny_at = allow_at + 2
    for pc, (op, dst, off, imm) in enumerate(body):
        if off is None:
            off = deny_at - pc - 1
        code.append(_insn(op, dst, off=off, imm=imm))
    code += [_insn(_MOV64_K, 0, imm=1), _insn(_EXIT)]
    if body:  # (the verifier refuses code that cannot be reached)
        code += [_insn(_MOV64_K, 0, imm=0), _insn(_EXIT)]
    return b"".join(code)


def _syscall() -> tuple[Any, int]:
    number = SYS_BPF.get(os.uname().machine)
    if number is None:
        raise BpfUnavailable(f"no bpf system call number for {os.uname().machine}")
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError) as e:
        raise BpfUnavailable(f"no syscall() in libc: {e}") from None
    fn.restype = ctypes.c_long
    return fn, number


def _bpf(cmd: int, attr: bytes) -> int:
    fn, number = _syscall()
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    ret = fn(ctypes.c_long(number), ctypes.c_int(cmd), buf, ctypes.c_uint(_ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def load(program: bytes) -> int:
    """Load ``program`` as a cgroup device program; its file descriptor (close it once
    attached). Raises ``BpfUnavailable`` saying why not."""
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    name = b"gpuq_devices"
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
    # log_size, log_buf, kern_version, prog_flags, prog_name[16].
    attr = struct.pack("<IIQQIIQII16s", BPF_PROG_TYPE_CGROUP_DEVICE, len(program) // 8,
                       ctypes.addressof(insns), ctypes.addressof(license_), 1,
                       ctypes.sizeof(log), ctypes.addressof(log), 0, 0, name)
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        detail = log.value.decode(errors="replace").strip().splitlines()
        more = f" ({detail[-1]})" if detail else ""
        raise BpfUnavailable(f"BPF_PROG_LOAD: {e.strerror}{more}") from None


def attach(cgroup_dir: str, prog_fd: int) -> None:
    """Attach the device program ``prog_fd`` to the cgroup2 directory ``cgroup_dir``."""
    try:
        cgroup_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise BpfUnavailable(f"cannot open {cgroup_dir}: {e.strerror}") from None
    try:
        # target_fd, attach_bpf_fd, attach_type, attach_flags
        _bpf(BPF_PROG_ATTACH, struct.pack("<IIII", cgroup_fd, prog_fd, BPF_CGROUP_DEVICE,
                                          BPF_F_ALLOW_MULTI))
    except OSError as e:
        raise BpfUnavailable(f"BPF_PROG_ATTACH to {cgroup_dir}: {e.strerror}") from None
    finally:
        os.close(cgroup_fd)


def fence(cgroup_dir: str, deny: Sequence[Device]) -> None:
    """Deny the processes of ``cgroup_dir`` every access to the devices ``deny``.
    Raises ``BpfUnavailable`` saying why it could not."""
    fd = load(device_program(deny))
    try:
        attach(cgroup_dir, fd)
    finally:
        os.close(fd)


def probe(parent_dir: str) -> str | None:
    """Whether ``fence`` works under the cgroup2 directory ``parent_dir``: ``None`` if it
    does (tried on a cgroup of its own, removed after), else why not."""
    path = os.path.join(parent_dir, f"probe-{os.getpid()}")
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except OSError as e:
        return f"cannot create {path}: {e.strerror}"
    try:
        fence(path, [])
    except BpfUnavailable as e:
        return str(e)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(path)
    return None

"""Run a command where bpf() is refused, for real: `python -m testing.no_bpf CMD [ARG...]`.

A seccomp filter (installed with prctl through ctypes, no library needed) makes every bpf() call of
this process and its children fail with EPERM, as the seccomp profile of a hardened cluster does;
then CMD is exec'd. Nothing else is refused, so what the command does without BPF is what a node
that forbids eBPF gets. The filter cannot be lifted (no_new_privs is set first, as seccomp wants
from a process that may lack CAP_SYS_ADMIN).
"""
from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, EPERM = 0x7FFF0000, 0x00050000, 1
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
# machine -> (AUDIT_ARCH_*, __NR_bpf)
ARCHES = {"x86_64": (0xC000003E, 321), "aarch64": (0xC00000B7, 280)}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def refuse_bpf() -> None:
    """From now on bpf() fails with EPERM in this process and all it execs or forks."""
    arch, nr_bpf = ARCHES[platform.machine()]
    program = b"".join([
        _insn(BPF_LD_W_ABS, 0, 0, 4),                        # seccomp_data.arch
        _insn(BPF_JEQ_K, 1, 0, arch),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),   # another ABI (x32, compat): refuse everything
        _insn(BPF_LD_W_ABS, 0, 0, 0),                        # seccomp_data.nr
        _insn(BPF_JEQ_K, 0, 1, nr_bpf),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ])
    buf = ctypes.create_string_buffer(program, len(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m testing.no_bpf CMD [ARG...]")
    refuse_bpf()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])

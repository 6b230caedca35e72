"""BPF capture filters (tcpdump syntax) compiled to classic BPF for SO_ATTACH_FILTER.

libpcap compiles them (through ctypes, no capture handle needed); without the
library, ``tcpdump -ddd`` over an empty capture of the right link type does the
same.  A filter that does not compile is a clear error, never a silent
capture-everything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import struct
import subprocess
import tempfile

from sensors.capture.pcap import global_header

SNAPLEN = 262144


class FilterError(Exception):
    """A capture filter that does not compile (the message says why)."""


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_Insn))]


Program = list[tuple[int, int, int, int]]


def _libpcap() -> ctypes.CDLL | None:
    for name in (ctypes.util.find_library("pcap"), "libpcap.so.1", "libpcap.so.0.8"):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def compile_filter(expression: str, link_type: int) -> Program:
    """(code, jt, jf, k) instructions of ``expression`` for frames of ``link_type``."""
    lib = _libpcap()
    if lib is not None:
        return _compile_libpcap(lib, expression, link_type)
    if shutil.which("tcpdump"):
        return _compile_tcpdump(expression, link_type)
    raise FilterError("compiling a capture filter needs libpcap or tcpdump (apt-get install libpcap0.8)")


def _compile_libpcap(lib: ctypes.CDLL, expression: str, link_type: int) -> Program:
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Program), ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    handle = lib.pcap_open_dead(link_type, SNAPLEN)
    if not handle:
        raise FilterError(f"libpcap cannot compile filters for link type {link_type}")
    try:
        program = _Program()
        if lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, 0xFFFFFFFF) != 0:
            raise FilterError(f"capture filter {expression!r}: {lib.pcap_geterr(handle).decode(errors='replace')}")
        try:
            return [(i.code, i.jt, i.jf, i.k) for i in program.bf_insns[: program.bf_len]]
        finally:
            lib.pcap_freecode(ctypes.byref(program))
    finally:
        lib.pcap_close(handle)


def _compile_tcpdump(expression: str, link_type: int) -> Program:
    with tempfile.NamedTemporaryFile(suffix=".pcap") as empty:
        empty.write(global_header(link_type, SNAPLEN))
        empty.flush()
        run = subprocess.run(["tcpdump", "-ddd", "-r", empty.name, expression], capture_output=True, text=True,
                             env={**os.environ, "LC_ALL": "C"})
    if run.returncode != 0:
        raise FilterError(f"capture filter {expression!r}: {run.stderr.strip().splitlines()[-1]}")
    lines = run.stdout.split("\n")
    count = int(lines[0])
    return [tuple(int(x) for x in line.split()) for line in lines[1 : count + 1]]  # type: ignore[misc]


def sock_fprog(program: Program) -> tuple[ctypes.Array[ctypes.c_char], bytes]:
    """(the instructions' memory, struct sock_fprog pointing at it); keep the first alive while attaching."""
    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    holder = ctypes.create_string_buffer(raw, len(raw))
    return holder, struct.pack("HL", len(program), ctypes.addressof(holder))


__all__ = ["FilterError", "compile_filter", "sock_fprog"]

"""Which sockets a set of processes listens on, from /proc (no psutil): for the "nothing listens
beyond this machine" checks (issue 15). A socket counts as listening when it is a TCP socket in
LISTEN state, a bound UDP socket, or an AF_UNIX socket that accepts connections."""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True)
class Listener:
    pid: int
    kind: str        # tcp | tcp6 | udp | udp6 | unix
    address: str     # "127.0.0.1:4242", "[::]:4242", a path, or "@name" (abstract unix)

    def problem(self) -> str:
        """'' when the socket is only reachable from this machine (loopback, or a Unix socket in a
        folder only its owner can enter), else why not."""
        if self.kind == "unix":
            if self.address.startswith("@"):
                return "abstract Unix socket (any process of the machine's network namespace can connect)"
            folder = os.path.dirname(self.address)
            try:
                mode = os.stat(folder).st_mode & 0o777
            except OSError as exc:
                return f"cannot stat its folder: {exc}"
            return "" if mode & 0o077 == 0 else f"its folder {folder} has mode {oct(mode)}, not 0700"
        host = self.address.rsplit(":", 1)[0].strip("[]")
        return "" if ipaddress.ip_address(host).is_loopback or _mapped_loopback(host) else \
            f"bound to {host}, reachable from other machines"


def _mapped_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    return ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def _addr(hex_addr: str, v6: bool) -> str:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # /proc prints each 32-bit word in host (little-endian) order.
    raw = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0]) for i in range(0, len(raw), 4))
    ip = socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, raw)
    return f"[{ip}]:{int(port, 16)}" if v6 else f"{ip}:{int(port, 16)}"


def _rows(pid: int, table: str) -> Iterator[list[str]]:
    """The columns of each row of /proc/PID/net/TABLE, header skipped; the rows read so far when
    the process (or the table) goes away."""
    try:
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f, None)
            for line in f:
                yield line.split()
    except OSError:
        pass


def _inet(pid: int, kind: str) -> dict[int, str]:
    out = {}
    for cols in _rows(pid, kind):
        local, state, inode = cols[1], cols[3], int(cols[9])
        listening = state == "0A" if kind.startswith("tcp") else True   # UDP: any bound socket
        if listening:
            out[inode] = _addr(local, kind.endswith("6"))
    return out


def _unix(pid: int) -> dict[int, str]:
    out = {}
    for cols in _rows(pid, "unix"):
        flags, inode = int(cols[3], 16), int(cols[6])
        if flags & 0x10000 and len(cols) > 7:      # __SO_ACCEPTCON: a listening socket
            out[inode] = cols[7]
    return out


def listening(pids: Iterable[int]) -> list[Listener]:
    found = []
    for pid in pids:
        inodes = _socket_inodes(pid)
        if not inodes:
            continue
        tables = {k: _inet(pid, k) for k in ("tcp", "tcp6", "udp", "udp6")}
        tables["unix"] = _unix(pid)
        for kind, table in tables.items():
            found += [Listener(pid, kind, table[i]) for i in sorted(inodes & table.keys())]
    return found


def exposed(pids: Iterable[int]) -> list[tuple[Listener, str]]:
    """Every listening socket of `pids` that is reachable from outside, with the reason."""
    return [(s, s.problem()) for s in listening(pids) if s.problem()]

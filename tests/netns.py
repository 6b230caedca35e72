"""Two network namespaces joined by a veth pair: a wire to replay captures onto and capture from.

``tcpreplay`` sends into one end (in the sender namespace); a sensor captures
the other.  IPv6 is off in both namespaces, so the kernel adds nothing of its
own (router solicitations, DAD) to what the sensor sees; the MTU is large
enough for every frame of the bundled captures.  Needs root (CAP_NET_ADMIN)
and iproute2 + tcpreplay (scripts/setup.sh installs them).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

MTU = 65000


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tcpreplay"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    return None


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@dataclass
class Wire:
    sender_ns: str
    receiver_ns: str
    sender_if: str
    receiver_if: str

    @classmethod
    def create(cls, tag: str, receiver_here: bool = False) -> Wire:
        """``receiver_here``: the capturing end stays in this namespace (to reach services on its loopback)."""
        w = cls(f"lw-{tag}-s", "" if receiver_here else f"lw-{tag}-r", f"lw{tag}s", f"lw{tag}r")
        w.delete()
        _run("ip", "link", "add", w.sender_if, "type", "veth", "peer", "name", w.receiver_if)
        for ns, dev in ((w.sender_ns, w.sender_if), (w.receiver_ns, w.receiver_if)):
            if ns:
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "set", dev, "netns", ns)
                _run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                     "net.ipv6.conf.default.disable_ipv6=1")
            else:
                _run("sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            _run(*(["ip", "-n", ns] if ns else ["ip"]), "link", "set", dev, "mtu", str(MTU), "up")
        return w

    def delete(self) -> None:
        for ns in (self.sender_ns, self.receiver_ns):
            if ns:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.receiver_if], capture_output=True)

    def in_receiver(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.receiver_ns, *cmd] if self.receiver_ns else list(cmd)

    def replay(self, *files: str, pps: float | None = None, mbps: float | None = None,
               topspeed: bool = True) -> TcpreplayResult:
        """Send captures onto the wire with tcpreplay (at top speed unless a rate is given)."""
        rate = (["--pps", str(pps)] if pps else ["--mbps", str(mbps)] if mbps else
                ["--topspeed"] if topspeed else [])
        run = subprocess.run(["ip", "netns", "exec", self.sender_ns, "tcpreplay", "-i", self.sender_if, *rate,
                              *files], capture_output=True, text=True, check=True)
        return TcpreplayResult.parse(run.stdout)


@dataclass
class TcpreplayResult:
    packets: int
    failed: int
    seconds: float
    pps: float

    @classmethod
    def parse(cls, out: str) -> TcpreplayResult:
        actual = re.search(r"Actual: (\d+) packets \((\d+) bytes\) sent in ([\d.]+) seconds", out)
        rated = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out)
        failed = re.search(r"Failed packets:\s+(\d+)", out)
        assert actual and rated and failed, out
        return cls(int(actual.group(1)), int(failed.group(1)), float(actual.group(3)), float(rated.group(1)))


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """This thread in network namespace ``ns`` (sockets made meanwhile stay in it)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/var/run/netns/{ns}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            yield
        finally:
            libc.setns(home.fileno(), CLONE_NEWNET)

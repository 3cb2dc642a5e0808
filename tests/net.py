"""Loopback ports for tests that start servers (nothing here reaches another address)."""

from __future__ import annotations

import socket


def free_ports(n: int = 3) -> list[int]:
    """`n` different ports free on 127.0.0.1 now (held together while chosen, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()

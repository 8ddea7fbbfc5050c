"""Free TCP ports on 127.0.0.1 for etcd and kube-apiserver."""

from __future__ import annotations

import socket
import threading

_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def free_ports(count: int) -> list[int]:
    """Ports the kernel just had free on 127.0.0.1, never the same one twice in this process."""
    with _ports_lock:
        sockets: list[socket.socket] = []
        ports: list[int] = []
        try:
            while len(ports) < count:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
                if port not in _ports_handed_out:
                    ports.append(port)
                    _ports_handed_out.add(port)
        finally:
            for sock in sockets:
                sock.close()
        return ports

"""The listening socket, opened here rather than by Hypercorn so that a drain can stop new
connections at the kernel before the socket closes.

Closing a listening socket resets every connection still in its accept queue: a client whose
handshake completed in that instant sends its request and gets a reset, a dropped request.
So on SIGTERM the socket first gets a socket filter that drops every incoming packet (new
SYNs: such clients retry the handshake and are refused once the socket is gone), the
server keeps accepting what is already queued for a moment, and only then does Hypercorn
close it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import struct

log = logging.getLogger(__name__)

_SO_ATTACH_FILTER = 26  # Linux
# One classic BPF instruction: BPF_RET | BPF_K with k = 0, "accept 0 bytes", i.e. drop.
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)


class Listener:
    """A bound, listening TCP socket handed to Hypercorn as `fd://N` (a duplicate that
    Hypercorn owns and closes)."""

    def __init__(self, host: str, port: int, backlog: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock: socket.socket | None = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(backlog)
        self._served = os.dup(self._sock.fileno())
        self._program = ctypes.create_string_buffer(_DROP_ALL)

    @property
    def bind(self) -> str:
        return f"fd://{self._served}"

    def refuse_new(self) -> bool:
        """Drop new connection attempts from now on; what is queued can still be accepted.
        Returns False where the kernel has no socket filters (then only the close remains)."""
        if self._sock is None:
            return False
        program = struct.pack("@HP", 1, ctypes.addressof(self._program))
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
        except OSError as exc:
            log.info("cannot filter the listening socket (%s); closing it directly", exc)
            return False
        finally:
            self.close()
        return True

    def close(self) -> None:
        """Close our descriptor; the socket lives on in Hypercorn's until it closes that."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

"""qlog files per connection, written also for connections still open when the app stops.

aioquic's QuicFileLogger writes a connection's trace only when the connection reaches its
end (`_close_end`, after the closing or draining period of 3 × PTO, RFC 9000 §10.2); the
client closes its socket right after CONNECTION_CLOSE and the server is stopped with SIGTERM,
so most traces would never be written. `QlogDirectory.close()` writes those still open.

Files are `ODCID-client.qlog` / `ODCID-server.qlog` (qlog 0.3 JSON, as aioquic writes and
qvis reads): both ends of a connection share its original destination CID, so one directory
holds both without clashes and pairs them by name.
"""

from __future__ import annotations

import functools
import json
import os

from aioquic.quic.logger import QLOG_VERSION, QuicLogger


class _QlogDirectoryMixin:
    qlog_version = QLOG_VERSION

    def __init__(self, path: str, role: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.role = role
        super().__init__()

    def end_trace(self, trace) -> None:
        if trace not in self._traces:
            return
        trace_dict = trace.to_dict()
        odcid = trace_dict["common_fields"]["ODCID"]
        document = {
            "qlog_format": "JSON",
            "qlog_version": self.qlog_version,
            "traces": [trace_dict],
        }
        with open(os.path.join(self.path, f"{odcid}-{self.role}.qlog"), "w") as stream:
            json.dump(document, stream)
        self._traces.remove(trace)

    def close(self) -> None:
        """Writes every trace whose connection has not ended (yet)."""
        for trace in list(self._traces):
            self.end_trace(trace)


class QlogDirectory(_QlogDirectoryMixin, QuicLogger):
    """aioquic's: one file per connection."""


@functools.cache
def _qlog_class(stack) -> type:
    if stack.name == "aioquic":
        return QlogDirectory
    return type(
        f"QlogDirectory_{stack.name}",
        (_QlogDirectoryMixin, stack.QuicLogger),
        {"qlog_version": stack.QLOG_VERSION},
    )


def qlog_directory(stack, path: str, role: str):
    """A QlogDirectory for `stack`'s logger (testbed/apps/stacks.py); qh3's traces carry
    packet headers only (STACKS.md)."""
    return _qlog_class(stack)(path, role)

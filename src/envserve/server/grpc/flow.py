"""How much of a peer's data one connection acknowledges: memory per connection bounded by the windows.

A stream's data is acknowledged (its window handed back) only while the connection buffers less than
:data:`CONNECTION_BUFFER` bytes of unfinished request messages; past that, only the oldest unfinished
stream is acknowledged, so it always completes. The connection window is as large as all stream windows
together plus one, so streams left waiting can never starve the oldest of connection window. No peer
can make the server hold more than ``CONNECTION_BUFFER + max_concurrent_streams * stream_window +
max_message`` bytes of requests. Streaming calls hand a stream's window back as their handler takes
messages (:meth:`InboundWindows.ack` with the stream's deferred bytes).
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, Optional

import h2.connection

from .stream import Stream

__all__ = ["CONNECTION_BUFFER", "InboundWindows"]

#: Bytes of unfinished request messages one connection may buffer before it stops handing windows back.
CONNECTION_BUFFER = 4 << 20


class InboundWindows:
    """The unary streams of one connection still receiving their request, and the bytes they hold."""

    def __init__(self, conn: h2.connection.H2Connection) -> None:
        self.conn = conn
        #: streams whose request message is not complete yet, oldest first (stream ids only grow)
        self.receiving: Dict[int, Stream] = {}
        #: bytes held in unfinished request messages
        self.buffered = 0
        #: streams with deferred acknowledgements, oldest first
        self.stalled: Deque[Stream] = deque()

    def start(self, stream: Stream) -> None:
        self.receiving[stream.sid] = stream

    def get(self, sid: int) -> Optional[Stream]:
        return self.receiving.get(sid)

    def received(self, stream: Stream, data: bytes) -> None:
        stream.data += data
        self.buffered += len(data)

    def settle(self, stream: Stream, size: int) -> None:
        """Acknowledge ``size`` flow-controlled bytes of ``stream`` now, or defer them while the
        connection holds too much and the stream is not the oldest."""
        oldest = next(iter(self.receiving))
        if self.buffered <= CONNECTION_BUFFER or stream.sid == oldest:
            self.ack(stream, size)
        else:
            if not stream.deferred:
                self.stalled.append(stream)
            stream.deferred += size

    def ack(self, stream: Stream, size: int) -> None:
        if size:
            self.conn.acknowledge_received_data(size, stream.sid)

    def finish(self, stream: Stream) -> None:
        """The stream's message is complete (or abandoned): its bytes no longer count, stalled peers move."""
        if self.receiving.pop(stream.sid, None) is None:
            return
        self.buffered -= len(stream.data)
        if stream.deferred:
            self.ack(stream, stream.deferred)
            stream.deferred = 0
        stalled = self.stalled
        while stalled:
            first = stalled[0]
            if first.sid in self.receiving and first.deferred:
                oldest = next(iter(self.receiving))
                if self.buffered > CONNECTION_BUFFER and first.sid != oldest:
                    break
                self.ack(first, first.deferred)
                first.deferred = 0
            stalled.popleft()

    def clear(self) -> None:
        self.receiving.clear()
        self.stalled.clear()

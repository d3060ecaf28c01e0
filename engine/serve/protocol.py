"""uvicorn's HTTP/1.1 protocol (h11) with a header deadline: a connection whose request headers are
not complete ``header_timeout_s`` after its first byte (or after its previous answer) is closed, so a
client that trickles its headers holds no connection for long. The body has its own deadline
(``body_timeout_s``, in the app: 408)."""
from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def with_header_deadline(header_timeout_s: float) -> type:
    class Protocol(H11Protocol):
        _deadline = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # headers still incomplete: drop the connection

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Protocol

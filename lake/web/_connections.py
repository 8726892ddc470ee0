"""Connection hygiene for ``lake serve web``: request deadlines, a connection cap, quiet logs.

uvicorn starts no timer before a connection's first request (``timeout_keep_alive`` runs only
between requests, and any byte cancels it), so a client that opens connections and sends
nothing, or a header a byte at a time, holds them forever; thousands of them exhaust the
process's file descriptors and the server stops answering everyone. This module is uvicorn's
HTTP/1.1 protocol (h11) with three additions, the web equivalent of the DICOM server's
``request_timeout``:

- **deadlines**: a request's line and headers must arrive within ``request_timeout`` seconds
  of the connection opening (or of the previous response ending); a trickle does not extend
  it. While a request body is being received, ``request_timeout`` seconds without a byte
  closes the connection (time the application itself spends not reading does not count).
- **a connection cap**: beyond ``max_connections`` open connections, the connection that has
  waited longest for its request headers is closed to make room (an idle flood only evicts
  itself); when every connection is busy with a request, the new one is answered 503 and
  closed.
- **quiet logs**: each kind of event (a closed idle connection, an evicted one, a refused one,
  a malformed request, an accept error of the event loop) is logged as one line, at most a few
  times a minute, then counted; never a traceback for what a client did.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

__all__ = ["ConnectionGuard", "ThrottledLog"]

LOG = logging.getLogger("lake.web.connections")

_BUSY = b'{"error":"too many connections"}'
_SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s" % (len(_BUSY), _BUSY)
)


class ThrottledLog:
    """One line per kind of event, at most ``burst`` per ``window`` seconds, then a count.

    Parameters
    ----------
    logger : logging.Logger
        Where lines go.
    burst : int
        Lines of one kind logged per window.
    window : float
        Seconds.
    """

    def __init__(self, logger: logging.Logger, burst: int = 5, window: float = 60.0) -> None:
        self._logger = logger
        self._burst = burst
        self._window = window
        self._lock = threading.Lock()
        self._kinds: dict[str, list[float]] = {}  # kind -> [window start, logged, suppressed]

    def warning(self, kind: str, message: str, *args: object) -> None:
        """Log ``message`` (a fixed text: never a value a client sent) unless throttled."""
        now = time.monotonic()
        with self._lock:
            state = self._kinds.setdefault(kind, [now, 0, 0])
            if now - state[0] >= self._window:
                if state[2]:
                    self._logger.warning("%d more %s event(s) in the last %.0f s",
                                         int(state[2]), kind, now - state[0])
                state[:] = [now, 0, 0]
            if state[1] >= self._burst:
                state[2] += 1
                return
            state[1] += 1
        self._logger.warning(message, *args)

    def suppressed(self, kind: str) -> int:
        """Events of ``kind`` counted but not logged in the current window."""
        with self._lock:
            return int(self._kinds.get(kind, [0, 0, 0])[2])

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An event-loop exception handler: one throttled line, no traceback.

        asyncio reports ``socket.accept() out of system resource`` (file descriptors
        exhausted) with a traceback on every failed accept; this keeps one line per kind.
        """
        exc = context.get("exception")
        kind = str(context.get("message") or "event loop error")[:80]
        self.warning(f"loop:{kind}", "%s (%s)", kind, type(exc).__name__ if exc else "no exception")


class _Logger:
    """What uvicorn's protocol calls ``self.logger``: its warnings go through the throttle."""

    def __init__(self, log: ThrottledLog) -> None:
        self._log = log
        self.level = logging.INFO  # uvicorn compares this with its TRACE level

    def warning(self, message: str, *args: object) -> None:
        self._log.warning("http:" + message[:60], "%s", message % args if args else message)

    def info(self, message: str, *args: object) -> None:
        LOG.info(message, *args)

    def debug(self, message: str, *args: object) -> None:
        LOG.debug(message, *args)

    def log(self, level: int, message: str, *args: object) -> None:
        LOG.log(level, message, *args)

    def error(self, message: str, *args: object, **kwargs: object) -> None:
        # uvicorn passes exc_info for an application that failed; no traceback here either.
        self._log.warning("http-error", "%s", message % args if args else message)


class ConnectionGuard:
    """Deadlines and a cap shared by the connections of one server.

    Parameters
    ----------
    request_timeout : float
        Seconds for a request's headers to arrive, and most seconds without a byte while
        its body is received.
    max_connections : int
        Open connections at most.
    log : ThrottledLog
        Where connection events are logged.
    """

    def __init__(self, request_timeout: float, max_connections: int, log: ThrottledLog) -> None:
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.log = log
        # Connections waiting for request headers, longest-waiting first (event loop only):
        # those that never sent a request, then those between requests (keep-alive), which
        # are evicted last: a client's pooled connection is not the flood.
        self.waiting: OrderedDict[_GuardedH11Protocol, None] = OrderedDict()
        self.between: OrderedDict[_GuardedH11Protocol, None] = OrderedDict()
        self.closed_idle = 0
        self.evicted = 0
        self.refused = 0

    def protocol(self) -> Callable[..., asyncio.Protocol]:
        """The protocol class to give ``uvicorn.Config(http=...)``."""
        guard = self

        class Guarded(_GuardedH11Protocol):
            _guard = guard

        return Guarded


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with request deadlines and the server's connection cap."""

    _guard: ConnectionGuard

    def __init__(self, config: Config, server_state: ServerState,
                 app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.logger = _Logger(self._guard.log)  # type: ignore[assignment]
        self._timer: asyncio.TimerHandle | None = None
        self._header_deadline: float | None = None
        self._served = False

    # -- asyncio protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self._guard
        if len(self.connections) > guard.max_connections:
            idle = guard.waiting or guard.between
            if idle:
                oldest = next(iter(idle))
                guard.evicted += 1
                guard.log.warning("evicted", "connection limit (%d) reached: closed the "
                                  "connection waiting longest for its request",
                                  guard.max_connections)
                oldest._close()
            else:
                guard.refused += 1
                guard.log.warning("refused", "connection limit (%d) reached with every "
                                  "connection busy: answered 503", guard.max_connections)
                transport.write(_SERVICE_UNAVAILABLE)
                self._close()
                return
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        self._served = True
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._not_waiting()
        super().connection_lost(exc)

    # -- deadlines --------------------------------------------------------------------------

    def _watch(self) -> None:
        """Arm the timer that fits where the client is in its request."""
        if self.transport.is_closing():
            self._stop_timer()
            self._not_waiting()
            return
        state = self.conn.their_state
        loop = asyncio.get_running_loop()
        if state is h11.IDLE:  # waiting for a request line and headers: a fixed deadline
            if self._header_deadline is None:
                self._header_deadline = loop.time() + self._guard.request_timeout
                (self._guard.between if self._served else self._guard.waiting)[self] = None
                self._arm(self._header_deadline)
            return
        self._header_deadline = None
        self._not_waiting()
        if state is h11.SEND_BODY:  # receiving a body: a byte at least every request_timeout
            self._arm(loop.time() + self._guard.request_timeout)
        else:  # the application's turn (or the connection is ending): no client deadline
            self._stop_timer()

    def _arm(self, when: float) -> None:
        self._stop_timer()
        self._timer = asyncio.get_running_loop().call_at(when, self._expired)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY and self.flow.read_paused:
            # The application is not reading (back-pressure): the client is not stalling.
            self._arm(asyncio.get_running_loop().time() + self._guard.request_timeout)
            return
        if state not in (h11.IDLE, h11.SEND_BODY):
            return
        self._guard.closed_idle += 1
        self._guard.log.warning(
            "timeout", "closed a connection that sent no complete request (or stalled its "
            "body) within %.0f s", self._guard.request_timeout)
        self._close()

    def _not_waiting(self) -> None:
        self._guard.waiting.pop(self, None)
        self._guard.between.pop(self, None)

    def _close(self) -> None:
        self._stop_timer()
        self._not_waiting()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()
        # No longer counted at once: uvicorn's limit_concurrency answers 503 while the open
        # connections (its count drops only at connection_lost, a loop turn later) reach the
        # cap, so a burst of evictions made room that a token holder's request did not see.
        self.connections.discard(self)

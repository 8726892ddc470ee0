"""Running the web application on uvicorn, in a thread of its own.

The server binds its socket itself (so port 0 picks a free port and :attr:`WebServer.port`
tells which), runs uvicorn's event loop in a background thread and stops gracefully:
it stops accepting, lets requests in flight finish, then shuts the application down
(committing whatever STOW-RS received). Signals are the caller's business
(``lake serve web`` turns SIGINT/SIGTERM into :meth:`WebServer.stop`).
"""

from __future__ import annotations

import asyncio
import resource
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

import uvicorn

from lake._errors import ConfigError
from lake.web._app import create_app
from lake.web._config import WebConfig
from lake.web._connections import LOG, ConnectionGuard, ThrottledLog

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.vault import Secret

__all__ = ["WebServer"]

_START_TIMEOUT = 30.0
_FD_RESERVE = 64  # descriptors kept for the catalog, blobs, logs and the listening socket


def connection_cap(wanted: int) -> int:
    """``wanted``, kept below half the process's file-descriptor limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft // 2 - _FD_RESERVE))


class WebServer:
    """``lake serve web``: the lake's web application on a socket.

    Parameters
    ----------
    lake : Lake
        An open lake.
    config : WebConfig
        Address, TLS, limits.
    secret : Secret, optional
        The lake's secret (STOW-RS needs it).

    Examples
    --------
    >>> import lake  # doctest: +SKIP
    >>> from lake.web import WebConfig, WebServer
    >>> lk = lake.open("/data/lake")  # doctest: +SKIP
    >>> with WebServer(lk, WebConfig(port=0)) as server:  # doctest: +SKIP
    ...     print(server.url)
    """

    def __init__(self, lake: Lake, config: WebConfig, secret: Secret | None = None) -> None:
        self.config = config
        self.app = create_app(lake, config, secret=secret)
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.log = ThrottledLog(LOG)
        self.guard = ConnectionGuard(config.request_timeout,
                                     connection_cap(config.max_connections), self.log)

    @property
    def port(self) -> int:
        if self._socket is None:
            raise ConfigError("the web server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        return f"{self.config.scheme}://{shown}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
        # with proto 0 every response whose body follows its headers in a second write waited
        # ~40 ms for the client's delayed ACK (Nagle), measured: /healthz 45 ms -> under 2 ms.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot listen on {self.config.host}:{self.config.port} ({exc.strerror}); "
                "choose another port or address"
            ) from None
        sock.listen(2048)
        sock.setblocking(False)
        return sock

    def start(self) -> None:
        """Bind and serve in a background thread; returns once the server accepts.

        Raises
        ------
        ConfigError
            If the address cannot be bound or TLS files cannot be loaded.
        """
        context = self.config.ssl_context()
        options: dict[str, Any] = {}
        if context is not None:
            def factory(_config: uvicorn.Config, _default: Any) -> ssl.SSLContext:
                return context

            options["ssl_context_factory"] = factory
            options["ssl_certfile"] = str(self.config.tls_cert)
        self._socket = self._bind()
        if self.config.public_url:
            self.app.state.base_url = self.config.public_url
        elif self.config.host not in ("0.0.0.0", "::"):  # else each connection's local address
            self.app.state.base_url = self.url
        uv_config = uvicorn.Config(
            self.app,
            http=self.guard.protocol(),  # type: ignore[arg-type]
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
            timeout_keep_alive=5,
            # Requests in progress at most (503 beyond); connections are capped by the guard.
            limit_concurrency=self.guard.max_connections + 1,
            **options,
        )
        self._server = uvicorn.Server(uv_config)
        sockets = [self._socket]

        async def serve() -> None:
            # The loop's own errors (an accept failing for want of descriptors comes with a
            # traceback, thousands a second under a flood) as throttled single lines.
            asyncio.get_running_loop().set_exception_handler(self.log.loop_exception)
            assert self._server is not None
            await self._server.serve(sockets=sockets)

        def run() -> None:
            try:
                asyncio.run(serve())
            except BaseException as exc:  # noqa: BLE001 - reported by start()/stop()
                self.error = exc

        self._thread = threading.Thread(target=run, name="lake-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(
                    f"the web server did not start ({type(self.error).__name__ if self.error else 'timeout'})"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop accepting, finish requests in flight, shut the application down."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> WebServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

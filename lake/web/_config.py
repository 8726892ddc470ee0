"""Settings of ``lake serve web``: address, TLS, anonymous access, limits, the viewer."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lake._errors import ConfigError

__all__ = ["WebConfig", "is_loopback"]


def _public_url(text: str) -> str:
    """``scheme://host[:port][/path]`` without a trailing slash.

    Raises
    ------
    ConfigError
        If it is not an http(s) URL with a host and nothing after the path.
    """
    parts = urlsplit(str(text).strip())
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.query
            or parts.fragment or parts.username or parts.password):
        raise ConfigError(
            "invalid public_url: give the address clients use, e.g. https://pacs.example.org "
            "or https://pacs.example.org/lake (no query, no credentials)"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebConfig:
    """Settings of the web server (``lake.json`` section ``web``, overridden per run).

    Parameters
    ----------
    host : str
        Address to listen on; loopback by default. Any other address needs TLS.
    port : int
        TCP port (0: any free port).
    tls_cert, tls_key : Path, optional
        PEM certificate chain and key: serve HTTPS only.
    allow_anonymous : bool
        Requests without a token may read (never store); loopback only.
    max_request_bytes : int
        Largest STOW-RS request body; refused while streaming once exceeded (413).
    max_instance_bytes : int
        Largest single instance in a STOW-RS request.
    commit_every, commit_interval : int, float
        Stored instances are committed to the catalog every N instances or T seconds.
    profile : str, optional
        De-identification profile for STOW-RS (the lake's default when omitted).
    viewer_dir : Path, optional
        The OHIF viewer's built files (``lake viewer install`` puts them in the lake's
        ``viewer/`` folder, the default).
    request_timeout : float
        Seconds a client has to send a request's line and headers (from the connection's
        start or its previous response), and most seconds without a byte while it sends a
        body; the connection is closed after that.
    max_connections : int
        Open connections at most (also kept below half the process's file-descriptor
        limit); beyond it the connection waiting longest for its request is closed, or,
        when all are busy, the new one is answered 503.
    workers : int
        Processes de-identifying STOW-RS instances (spawned at start-up, as ``lake serve
        dicom``'s): they use the other cores and never hold the server's GIL; 0
        de-identifies on the server's own threads.
    public_url : str, optional
        The server's address as clients reach it (``https://pacs.example.org/lake`` behind
        a reverse proxy): the base of every URL the server returns (RetrieveURL,
        BulkDataURI, redirects, share links). Without it, the address the server listens
        on; never the request's Host header.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_anonymous: bool = False
    max_request_bytes: int = 4 * 2**30
    max_instance_bytes: int = 2**30
    commit_every: int = 500
    commit_interval: float = 1.0
    profile: str | None = None
    viewer_dir: Path | None = None
    request_timeout: float = 10.0
    max_connections: int = 1000
    public_url: str | None = None
    workers: int = 2

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise ConfigError("invalid port: a TCP port is a number from 0 to 65535")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("a TLS certificate and its key go together: give both or neither")
        for name in ("max_request_bytes", "max_instance_bytes", "commit_every", "max_connections"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"invalid {name}: it must be a positive number")
        if int(self.workers) < 0:
            raise ConfigError("invalid workers: it must be 0 or more")
        for name in ("commit_interval", "request_timeout"):
            if float(getattr(self, name)) <= 0:
                raise ConfigError(f"invalid {name}: it must be a positive number of seconds")
        if self.public_url is not None:
            object.__setattr__(self, "public_url", _public_url(self.public_url))
        if not is_loopback(self.host) and self.tls_cert is None:
            raise ConfigError(
                f"refusing to serve on {self.host} without TLS: tokens and data would cross the "
                "network in clear text; pass a certificate and key (tls_cert, tls_key) or "
                "listen on 127.0.0.1"
            )
        if self.allow_anonymous and not is_loopback(self.host):
            raise ConfigError(
                "anonymous access is allowed only on a loopback address; remove "
                "allow_anonymous or listen on 127.0.0.1"
            )

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (TLS 1.2 or newer), or None without TLS.

        Raises
        ------
        ConfigError
            If the certificate or key cannot be loaded.
        """
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"TLS setup failed ({type(exc).__name__}): check that the certificate and key "
                "are readable PEM files that belong together"
            ) from None
        return context

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **overrides: Any) -> WebConfig:
        """Build from the ``web`` section of ``lake.json``, then apply ``overrides``.

        ``None`` overrides are ignored, so unset command-line options keep the lake's
        settings.

        Raises
        ------
        ConfigError
            On unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)} in the web section of lake.json; "
                f"known: {', '.join(sorted(known))}"
            )
        values = dict(settings)
        values.update({k: v for k, v in overrides.items() if v is not None})
        bad = sorted(set(values) - known)
        if bad:
            raise ConfigError(f"unknown web setting(s): {', '.join(bad)}")
        for name in ("tls_cert", "tls_key", "viewer_dir"):
            if values.get(name) is not None:
                values[name] = Path(values[name])
        try:
            return replace(cls(), **values) if values else cls()
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"invalid web setting in lake.json ({type(exc).__name__})") from None

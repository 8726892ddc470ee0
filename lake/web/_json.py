"""JSON responses (DICOM JSON, errors), compressed when the client asks, and resource URLs."""

from __future__ import annotations

import gzip
import json
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import Response

__all__ = ["DICOM_JSON", "accepts_gzip", "base_url", "json_response", "retrieve_url"]

DICOM_JSON = "application/dicom+json"
_GZIP_FROM = 1024


def accepts_gzip(conn: HTTPConnection) -> bool:
    """Whether the request's Accept-Encoding allows gzip."""
    for item in conn.headers.get("accept-encoding", "").split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def json_response(
    conn: HTTPConnection, payload: Any, media_type: str = "application/json", status: int = 200
) -> Response:
    """``payload`` as compact JSON; gzip-compressed when asked for and worth it."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Vary": "Accept-Encoding"}
    if len(body) >= _GZIP_FROM and accepts_gzip(conn):
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return Response(body, status_code=status, media_type=media_type, headers=headers)


def retrieve_url(base: str, study: str, series: str | None = None, sop: str | None = None) -> str:
    """The WADO-RS URL of a study, series or instance below ``base``."""
    url = f"{base}/dicomweb/studies/{study}"
    if series:
        url += f"/series/{series}"
        if sop:
            url += f"/instances/{sop}"
    return url


def base_url(conn: HTTPConnection) -> str:
    """The server's own URL, never taken from the request's Host header.

    The configured ``public_url``, else the address the server bound (set by the server),
    else, on a wildcard address, the local address the connection arrived at.
    """
    url = getattr(conn.app.state, "base_url", None)
    if url:
        return str(url)
    host, port = conn.scope.get("server") or ("localhost", None)
    shown = f"[{host}]" if ":" in str(host) else str(host)
    scheme = conn.scope.get("scheme", "http")
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{shown}" + (f":{port}" if port and port != default else "")

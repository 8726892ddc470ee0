"""Settings of the DICOM network services: AE titles, peers, limits, timeouts, TLS.

Settings come from the lake's config (``lake.json``, section ``dicom``) and can be
overridden per run (the command line). Every value is validated on entry so a
typo fails at start-up with a message saying what to fix, not mid-association.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lake._errors import ConfigError

__all__ = [
    "BUSY_STRETCH",
    "MAX_COMMIT_WAIT",
    "Peer",
    "ServerConfig",
    "TLSConfig",
    "parse_ae_title",
    "parse_destination",
    "parse_peer",
]

_AE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII except backslash
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>\d{1,5})$")
LOOPBACK = "127.0.0.1"
_ACKNOWLEDGE = ("receipt", "outcome")
BUSY_STRETCH = 4
"""While instances keep arriving, a commit waits for a pause up to this many times
``commit_interval`` (a burst is committed in fewer batches: :class:`lake.net._spool.Committer`)."""
MAX_COMMIT_WAIT = 900.0
"""Seconds a received instance may wait for its commit at most (``commit_interval *
BUSY_STRETCH``): a quarter of :data:`lake.steward._maintenance.MIN_GRACE` (1 h). Until its
commit, a pending instance's pixel blob is referenced by no row and only gc's grace keeps it,
so a longer wait is refused (``commit_interval`` at most 225 s)."""


def parse_ae_title(value: str, what: str = "AE title") -> str:
    """Validate a DICOM AE title (1-16 printable ASCII characters, no backslash).

    Raises
    ------
    ConfigError
        If ``value`` is not a valid AE title.
    """
    title = value.strip()
    if not title or not _AE_CHARS.match(title):
        raise ConfigError(
            f"invalid {what}: an AE title has 1 to 16 printable ASCII characters and no backslash"
        )
    return title


def _port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid {what}: a TCP port is a number from 0 to 65535") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"invalid {what}: a TCP port is a number from 0 to 65535")
    return port


def _host_port(text: str, what: str) -> tuple[str, int]:
    match = _HOST_PORT.match(text.strip())
    if match is None:
        raise ConfigError(f"invalid {what}: expected HOST:PORT (IPv6 as [ADDR]:PORT)")
    host = match.group("v6") or match.group("host")
    return host, _port(match.group("port"), what)


@dataclass(frozen=True)
class Peer:
    """A remote DICOM application entity.

    Parameters
    ----------
    aet : str
        Its AE title.
    host : str
        Host name or address.
    port : int
        TCP port.
    """

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"


def parse_peer(text: str) -> Peer:
    """Parse ``AET@HOST:PORT``.

    Examples
    --------
    >>> parse_peer("PACS@10.0.0.5:104")
    Peer(aet='PACS', host='10.0.0.5', port=104)

    Raises
    ------
    ConfigError
        If the text is not ``AET@HOST:PORT``.
    """
    aet, sep, rest = text.rpartition("@")
    if not sep:
        raise ConfigError("invalid peer: expected AET@HOST:PORT, e.g. PACS@10.0.0.5:104")
    host, port = _host_port(rest, "peer address")
    return Peer(parse_ae_title(aet, "peer AE title"), host, port)


def parse_destination(text: str) -> Peer:
    """Parse a C-MOVE destination ``AET=HOST:PORT``.

    Examples
    --------
    >>> parse_destination("WORKSTATION=127.0.0.1:11113")
    Peer(aet='WORKSTATION', host='127.0.0.1', port=11113)

    Raises
    ------
    ConfigError
        If the text is not ``AET=HOST:PORT``.
    """
    aet, sep, rest = text.partition("=")
    if not sep:
        raise ConfigError("invalid move destination: expected AET=HOST:PORT")
    host, port = _host_port(rest, "move destination address")
    return Peer(parse_ae_title(aet, "move destination AE title"), host, port)


@dataclass(frozen=True)
class TLSConfig:
    """TLS for the server: its certificate chain and key; optionally a CA for client certificates.

    Parameters
    ----------
    cert : Path
        PEM certificate (chain) of the server.
    key : Path
        PEM private key of the server.
    ca : Path, optional
        PEM bundle of CAs whose client certificates are accepted; when given, every
        client must present a certificate signed by one of them.
    """

    cert: Path
    key: Path
    ca: Path | None = None

    def server_context(self) -> ssl.SSLContext:
        """An :class:`ssl.SSLContext` for accepting connections.

        Raises
        ------
        ConfigError
            If a file is missing or is not a valid certificate or key.
        """
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
            if self.ca is not None:
                context.load_verify_locations(cafile=self.ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"TLS setup failed ({type(exc).__name__}): check that the certificate, key "
                "and CA files are readable PEM files that belong together"
            ) from None
        return context


@dataclass(frozen=True)
class ServerConfig:
    """Settings of ``lake serve dicom``.

    Parameters
    ----------
    aet : str
        The lake's AE title (called AE title that peers must use).
    host : str
        Address to listen on; loopback by default.
    port : int
        TCP port (0: any free port, see :attr:`DicomServer.port`).
    allow : tuple of str
        Calling AE titles accepted. Empty means any calling AE, which is only
        allowed on a loopback address.
    move_destinations : dict
        C-MOVE destinations by AE title.
    max_associations : int
        Simultaneous associations accepted; more are rejected (transient).
    request_timeout : float
        Seconds a new connection has to complete its TLS handshake and send its whole
        A-ASSOCIATE-RQ; until then it holds no association slot, and after it is closed.
    acse_timeout, dimse_timeout, network_timeout : float
        Seconds to wait for association messages, DIMSE messages and any network
        activity (a stall mid-PDU included) before aborting the association.
    commit_every : int
        Commit received instances to the catalog every this many instances...
    commit_interval : float
        ...or once the oldest has waited this many seconds and arrivals pause (0.25 s
        without one), at most four times this while they keep coming; whichever comes
        first. A commit costs ~0.1 s of CPU whatever its size, so a burst is committed
        in as few batches as these bounds allow.
        At most :data:`MAX_COMMIT_WAIT` / :data:`BUSY_STRETCH` (225 s), so that no received
        instance waits longer than a quarter of gc's grace.
    max_instance_bytes : int
        Larger received instances are refused (Out of Resources), while they stream in.
    acknowledge : str
        ``"receipt"`` (default): a C-STORE is answered once the instance as received is
        durable, sealed, in the receipt journal, and de-identified in the background (a
        refusal is quarantined with its reason, not reported to the sender).
        ``"outcome"``: answered once also de-identified, with the refusal's status.
        A lake in an object store always works as ``"outcome"``.
    workers : int
        Worker processes de-identifying received instances (spawned at start-up); 0
        de-identifies on each association's own thread (no extra process, slower).
    receive_memory_bytes : int
        Bytes of received instances held at once, all associations together (at least
        ``max_instance_bytes``); an instance arriving beyond it is refused (Out of
        Resources, which senders retry) while it streams in.
    profile : str, optional
        De-identification profile (the lake's default when omitted).
    tls : TLSConfig, optional
        Accept TLS connections only.
    """

    aet: str = "LAKE"
    host: str = LOOPBACK
    port: int = 11112
    allow: tuple[str, ...] = ()
    move_destinations: Mapping[str, Peer] = field(default_factory=dict)
    max_associations: int = 10
    request_timeout: float = 5.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    commit_every: int = 1000
    commit_interval: float = 2.0
    max_instance_bytes: int = 2**30
    receive_memory_bytes: int = 2**30
    acknowledge: str = "receipt"
    workers: int = 2
    profile: str | None = None
    tls: TLSConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "aet", parse_ae_title(self.aet, "AE title (aet)"))
        object.__setattr__(self, "port", _port(self.port, "port"))
        object.__setattr__(
            self, "allow", tuple(parse_ae_title(a, "allowed AE title (allow)") for a in self.allow)
        )
        for name in ("max_associations", "commit_every", "max_instance_bytes",
                     "receive_memory_bytes"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"invalid {name}: it must be a positive number")
        for name in ("request_timeout", "acse_timeout", "dimse_timeout", "network_timeout",
                     "commit_interval"):
            if float(getattr(self, name)) <= 0:
                raise ConfigError(f"invalid {name}: it must be a positive number of seconds")
        if float(self.commit_interval) * BUSY_STRETCH > MAX_COMMIT_WAIT:
            raise ConfigError(
                f"invalid commit_interval={float(self.commit_interval):g}: received instances would "
                f"wait up to {BUSY_STRETCH} times that uncommitted, over {MAX_COMMIT_WAIT:g} s (a "
                f"quarter of gc's 1 h grace, which alone protects them); give at most "
                f"commit_interval={MAX_COMMIT_WAIT / BUSY_STRETCH:g}",
                parameters=("commit_interval",),
            )
        if int(self.workers) < 0:
            raise ConfigError("invalid workers: it must be 0 or more")
        if self.acknowledge not in _ACKNOWLEDGE:
            raise ConfigError("invalid acknowledge: it must be 'receipt' or 'outcome'")
        if not self.allow and not _is_loopback(self.host):
            raise ConfigError(
                f"listening on {self.host} without an allow-list would accept any calling AE: "
                "list each modality/PACS allowed to connect (allow=AET)", parameters=("allow",)
            )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **overrides: Any) -> ServerConfig:
        """Build from the ``dicom`` section of ``lake.json``, then apply ``overrides``.

        ``None`` overrides and empty collections are ignored, so unset command-line
        options keep the lake's settings. In ``lake.json``, ``move_destinations`` maps
        AE titles to ``"HOST:PORT"`` and ``tls`` is ``{"cert", "key", "ca"}``.

        Raises
        ------
        ConfigError
            On unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)} in the dicom section of lake.json; "
                f"known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {k: v for k, v in settings.items() if k in known}
        if "move_destinations" in values:
            values["move_destinations"] = _destinations(values["move_destinations"])
        if "allow" in values:
            values["allow"] = _strings(values["allow"], "allow")
        if isinstance(values.get("tls"), Mapping):
            values["tls"] = _tls(values["tls"])
        config = cls(**values)
        updates = {
            k: v for k, v in overrides.items() if v is not None and not (_is_empty_collection(v))
        }
        if "move_destinations" in updates:
            merged = dict(config.move_destinations)
            merged.update(updates["move_destinations"])
            updates["move_destinations"] = merged
        bad = sorted(set(updates) - known)
        if bad:
            raise ConfigError(f"unknown server setting(s): {', '.join(bad)}")
        return replace(config, **updates)


def _is_empty_collection(value: Any) -> bool:
    return isinstance(value, list | tuple | dict | set) and not value


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"invalid {what} in lake.json: expected a list of AE titles")
    return tuple(str(v) for v in value)


def _destinations(value: Any) -> dict[str, Peer]:
    if not isinstance(value, Mapping):
        raise ConfigError('invalid move_destinations in lake.json: expected {"AET": "HOST:PORT"}')
    out: dict[str, Peer] = {}
    for aet, address in value.items():
        peer = parse_destination(f"{aet}={address}")
        out[peer.aet] = peer
    return out


def _tls(value: Mapping[str, Any]) -> TLSConfig:
    try:
        return TLSConfig(
            Path(value["cert"]), Path(value["key"]), Path(value["ca"]) if value.get("ca") else None
        )
    except KeyError:
        raise ConfigError('invalid tls in lake.json: expected {"cert": ..., "key": ...}') from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

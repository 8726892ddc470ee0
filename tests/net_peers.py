"""Real DICOM peers for the network tests: dcmtk tools and an Orthanc PACS, on loopback.

Tests skip cleanly when a binary is absent (CI installs dcmtk and orthanc).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "Flood",
    "Orthanc",
    "associate_rq",
    "dcmtk",
    "free_port",
    "read_pdu",
    "require",
    "stop_server",
    "wait_port",
]


def require(*binaries: str) -> None:
    """Skip the test unless every binary is on PATH."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_server(proc: subprocess.Popen[str] | subprocess.Popen[bytes], *,
                signum: int = signal.SIGTERM, timeout: float = 120.0) -> tuple[str, str]:
    """Stop a served command as an operator does (SIGTERM) and wait until it exits.

    Returns what it wrote to its piped stdout and stderr (``""`` for a stream not piped).
    One that has not exited after ``timeout`` seconds is killed, so none outlives its test;
    the caller checks ``proc.returncode`` (0 for a clean stop, negative once killed).
    """
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return _text(out), _text(err)


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 90.0) -> None:
    """Wait until something listens on ``host:port`` (a deadline, not a timing: a server
    starting on two cores under a load of ~20 took more than 30 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def dcmtk(
    tool: str, *args: str | os.PathLike[str], timeout: float = 300, nodelay: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool; ``TCP_NODELAY=1`` in its environment unless ``nodelay`` is False."""
    require(tool)
    env = dict(os.environ)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    return subprocess.run(
        [tool, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
        check=False,
    )


@dataclass
class Orthanc:
    """An Orthanc PACS in a temporary folder, listening on loopback ports.

    Parameters
    ----------
    folder : Path
        Storage, index and config go here.
    aet : str
        Orthanc's AE title.
    modalities : mapping
        AE title -> (host, port) of every peer allowed to query/retrieve (and move
        destinations).
    storage_access_on_find : str
        Orthanc's ``StorageAccessOnFind`` (``Always`` is its default; ``Never``
        answers C-FIND from its index only).
    extra : mapping, optional
        More configuration settings (override the defaults).
    nodelay : bool
        Start Orthanc with ``TCP_NODELAY=1`` (its dcmtk network layer reads it).
    """

    folder: Path
    aet: str = "ORTHANC"
    modalities: Mapping[str, tuple[str, int]] | None = None
    storage_access_on_find: str = "Always"
    extra: Mapping[str, Any] | None = None
    nodelay: bool = True
    dicom_port: int = 0
    http_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        return dict(self._base_config(), **(self.extra or {}))

    def _base_config(self) -> dict[str, Any]:
        return {
            "Name": "lake-test-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {
                aet.lower(): [aet, host, port]
                for aet, (host, port) in (self.modalities or {}).items()
            },
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 30,
            "StorageAccessOnFind": self.storage_access_on_find,
            "SynchronousCMove": True,
            "Plugins": [],
            "LogExportedResources": False,
            "KeepAlive": True,
            "ConcurrentJobs": 2,
        }

    def start(self) -> Orthanc:
        require("Orthanc")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port = self.dicom_port or free_port()
        self.http_port = self.http_port or free_port()
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = (self.folder / "orthanc.log").open("wb")
        env = dict(os.environ)
        if self.nodelay:
            env["TCP_NODELAY"] = "1"
        self.process = subprocess.Popen(
            ["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT,
            cwd=self.folder, env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited; see {self.folder / 'orthanc.log'}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                self.get("/system")
                wait_port(self.dicom_port)
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError("Orthanc did not start within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, data: bytes, content_type: str = "application/dicom") -> Any:
        request = urllib.request.Request(
            self.url + path, data=data, method="POST", headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def upload(self, paths: Sequence[Path]) -> int:
        """POST each file to ``/instances``; returns how many Orthanc accepted."""
        done = 0
        for path in paths:
            self.post("/instances", path.read_bytes())
            done += 1
        return done

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])


@contextlib.contextmanager
def orthanc(folder: Path, **kwargs: Any) -> Iterator[Orthanc]:
    """A running :class:`Orthanc`, stopped on exit."""
    pacs = Orthanc(folder, **kwargs)
    pacs.start()
    try:
        yield pacs
    finally:
        pacs.stop()


def synthetic_rows(
    n: int,
    *,
    per_study: int = 100,
    per_series: int = 50,
    studies_per_patient: int = 2,
    start: int = 0,
) -> Iterator[dict[str, Any]]:
    """Catalog rows for ``n`` instances, cheap to make (for C-FIND at scale).

    Studies alternate CT and MR, dates step one day per study from 2015-01-01, times
    one minute per study from 08:00, and every row names its patient ANON^<n> in its
    header JSON.
    """
    import datetime as dt

    base = dt.date(2015, 1, 1)
    for i in range(start, start + n):
        study = i // per_study
        series = i // per_series
        patient = study // studies_per_patient
        modality = "CT" if study % 2 == 0 else "MR"
        minute = 8 * 60 + study % 600
        name = f"ANON^{patient:06d}"
        yield {
            "PatientID": f"P{patient:06d}",
            "StudyInstanceUID": f"2.25.1{study:09d}",
            "SeriesInstanceUID": f"2.25.2{series:09d}",
            "SOPInstanceUID": f"2.25.3{i:09d}",
            "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2" if modality == "CT"
            else "1.2.840.10008.5.1.4.1.1.4",
            "Modality": modality,
            "StudyDate": base + dt.timedelta(days=study),
            "StudyTime": f"{minute // 60:02d}:{minute % 60:02d}:00",
            "StudyDescription": f"{modality} HEAD {study % 7}",
            "SeriesNumber": series % (per_study // per_series) + 1,
            "InstanceNumber": i % per_series + 1,
            "Rows": 64,
            "Columns": 64,
            "TransferSyntaxUID": "1.2.840.10008.1.2.1",
            "header_json": json.dumps({"00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]}}),
            "profile": "synthetic",
        }


@dataclass(frozen=True)
class Certificates:
    """PEM files of a test CA, a server certificate (for 127.0.0.1) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(folder: Path) -> Certificates:
    """A throw-away CA and two leaf certificates, made with ``cryptography``."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ))
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("lake test CA")).issuer_name(name("lake test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, usage: x509.ObjectIdentifier) -> tuple[x509.Certificate, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(name(common)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert, key

    server, server_key = leaf("lake", ExtendedKeyUsageOID.SERVER_AUTH)
    client, client_key = leaf("modality", ExtendedKeyUsageOID.CLIENT_AUTH)
    return Certificates(
        ca=write_cert(ca, folder / "ca.pem"),
        server_cert=write_cert(server, folder / "server.pem"),
        server_key=write_key(server_key, folder / "server.key"),
        client_cert=write_cert(client, folder / "client.pem"),
        client_key=write_key(client_key, folder / "client.key"),
    )


# --- hostile peers --------------------------------------------------------------------------


def associate_rq(calling: str, called: str = "LAKE", *contexts: str) -> bytes:
    """A well-formed A-ASSOCIATE-RQ PDU (Verification unless ``contexts`` are given)."""
    from pynetdicom import build_context
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
    )
    from pynetdicom.transport import AddressInformation

    primitive = A_ASSOCIATE()
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 11112)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 11112)
    cxs = [build_context(c) for c in (contexts or ("1.2.840.10008.1.1",))]
    for i, cx in enumerate(cxs):
        cx.context_id = 2 * i + 1
    primitive.presentation_context_definition_list = cxs
    length = MaximumLengthNotification()
    length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0"
    primitive.user_information = [length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU from ``sock`` (b"" if the peer closed first)."""
    data = b""
    while len(data) < 6:
        chunk = sock.recv(6 - len(data))
        if not chunk:
            return b""
        data += chunk
    need = 6 + struct.unpack(">I", data[2:6])[0]
    while len(data) < need:
        chunk = sock.recv(need - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


class Flood:
    """Hostile connections to a DICOM server on loopback, kept up until the block ends.

    Workers (threads), each reconnecting as soon as its connection ends:

    - ``idle``: connect and send nothing;
    - ``trickle``: send a valid A-ASSOCIATE-RQ of an allowed AE, one byte every
      ``trickle_every`` seconds (it never completes in a short request timeout);
    - ``intruders``: send whole A-ASSOCIATE-RQs with an unknown calling AE, as fast as
      they are answered.

    ``outcomes`` counts what happened: ``idle closed`` / ``trickle closed`` (the server
    closed the connection), ``intruder rejected`` (an A-ASSOCIATE-RJ, calling AE not
    recognised), ``intruder closed`` (closed unanswered), ``intruder accepted`` (an
    A-ASSOCIATE-AC), ``intruder other`` (anything else), ``connect failed``.

    Run as a script (``python -m tests.net_peers flood PORT --idle N ...``), it floods from
    its own process, prints ``ready`` once every worker has connected, and prints the
    outcomes as JSON when its stdin closes.
    """

    def __init__(
        self, port: int, *, idle: int = 0, trickle: int = 0, intruders: int = 0,
        allowed: str = "MODALITY", trickle_every: float = 0.2,
    ) -> None:
        self.port = port
        self.allowed = allowed
        self.trickle_every = trickle_every
        self.outcomes: Counter[str] = Counter()
        self.connected: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads = [
            threading.Thread(target=target, daemon=True, name=f"flood-{kind}-{i}")
            for kind, target, n in (("idle", self._idle, idle), ("trickle", self._trickle, trickle),
                                    ("intruder", self._intruder, intruders))
            for i in range(n)
        ]

    def __enter__(self) -> Flood:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=30)

    def wait_connected(self, kind: str, n: int, timeout: float = 60) -> None:
        """Wait until ``kind`` workers have made ``n`` connections in all."""
        deadline = time.monotonic() + timeout
        while self.connected[kind] < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.connected[kind]} {kind} connections")
            time.sleep(0.05)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    @contextlib.contextmanager
    def _connection(self, kind: str) -> Iterator[socket.socket | None]:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            self._count("connect failed")
            time.sleep(0.1)
            yield None
            return
        with self._lock:
            self._sockets.add(sock)
            self.connected[kind] += 1
        try:
            yield sock
        finally:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()

    def _closed_by_peer(self, sock: socket.socket, wait: float) -> bool | None:
        """True if the server closed (or spoke); None if still silent after ``wait`` s."""
        sock.settimeout(wait)
        try:
            sock.recv(4096)
            return True
        except TimeoutError:
            return None
        except OSError:
            return True

    def _idle(self) -> None:
        while not self._stop.is_set():
            with self._connection("idle") as sock:
                if sock is None:
                    continue
                while not self._stop.is_set():
                    if self._closed_by_peer(sock, 0.5):
                        if not self._stop.is_set():
                            self._count("idle closed")
                        break

    def _trickle(self) -> None:
        request = associate_rq(self.allowed)
        while not self._stop.is_set():
            with self._connection("trickle") as sock:
                if sock is None:
                    continue
                for i in range(len(request)):
                    if self._stop.is_set():
                        return
                    try:
                        sock.sendall(request[i : i + 1])
                    except OSError:
                        self._count("trickle closed")
                        break
                    if self._closed_by_peer(sock, self.trickle_every):
                        self._count("trickle closed")
                        break
                else:
                    self._count("trickle completed")

    def _intruder(self) -> None:
        request = associate_rq("INTRUDER")
        while not self._stop.is_set():
            with self._connection("intruder") as sock:
                if sock is None:
                    continue
                try:
                    sock.sendall(request)
                    sock.settimeout(30)
                    answer = read_pdu(sock)
                except OSError:
                    answer = b""
                if self._stop.is_set():
                    return
                if answer[:1] == b"\x03" and answer[7:10] == b"\x01\x01\x03":
                    self._count("intruder rejected")
                elif answer[:1] == b"\x02":
                    self._count("intruder accepted")
                elif not answer:
                    # closed before it answered: waiting connections were many and this one
                    # had not sent its request yet (it was starved here) - refused all the same
                    self._count("intruder closed")
                else:
                    self._count("intruder other")


def _flood_main(argv: Sequence[str]) -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tests.net_peers flood")
    parser.add_argument("port", type=int)
    for kind in ("idle", "trickle", "intruders"):
        parser.add_argument(f"--{kind}", type=int, default=0)
    parser.add_argument("--allowed", default="MODALITY")
    args = parser.parse_args(argv)
    with Flood(args.port, idle=args.idle, trickle=args.trickle, intruders=args.intruders,
               allowed=args.allowed) as flood:
        for kind, n in (("idle", args.idle), ("trickle", args.trickle),
                        ("intruder", args.intruders)):
            flood.wait_connected(kind, n)
        print("ready", flush=True)
        sys.stdin.read()  # until the test closes it
    print(json.dumps(dict(flood.outcomes)), flush=True)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["flood"]:
        raise SystemExit("usage: python -m tests.net_peers flood PORT [--idle N] [--trickle N] "
                         "[--intruders N]")
    _flood_main(sys.argv[2:])

"""Real DICOM peers for the network tests: dcmtk tools and an Orthanc PACS, on loopback.

Tests skip cleanly when a binary is absent (CI installs dcmtk and orthanc).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Orthanc", "dcmtk", "free_port", "require", "wait_port"]


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


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Wait until something listens on ``host:port``."""
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

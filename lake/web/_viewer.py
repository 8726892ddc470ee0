"""The OHIF viewer: fetched from npm, configured for the lake's DICOMweb, served at /viewer.

``install_viewer`` runs ``npm pack @ohif/app@VERSION`` (the package holds the built viewer in
``package/dist``), unpacks the files safely, points its page at ``/viewer/`` and writes an
``app-config.js`` whose only data source is this server's ``/dicomweb``. The server serves
whatever the folder holds, falling back to ``index.html`` for the viewer's own routes
(``/viewer/viewer?StudyInstanceUIDs=...``). Links carry a token once (``/viewer?token=...``):
the server keeps it in an HttpOnly, SameSite=Strict cookie, valid for reading only.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from lake._errors import ConfigError
from lake.access import Grant
from lake.web._guard import TOKEN_COOKIE

__all__ = [
    "OHIF_VERSION", "SpaFiles", "install_viewer", "viewer_entry", "viewer_missing", "viewer_ready",
]

OHIF_VERSION = "3.13.2"
BASE = "/viewer/"
_MARKER = "imaging-lake-viewer.txt"

APP_CONFIG = """/* Written by 'lake viewer install': OHIF reads the lake's DICOMweb on this server. */
window.config = {
  routerBasename: '/viewer',
  showStudyList: true,
  extensions: [],
  modes: [],
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'lake',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'lake',
      configuration: {
        friendlyName: 'imaging-lake',
        name: 'lake',
        wadoUriRoot: window.location.origin + '/dicomweb',
        qidoRoot: window.location.origin + '/dicomweb',
        wadoRoot: window.location.origin + '/dicomweb',
        qidoSupportsIncludeField: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


def _rewrite_index(text: str) -> str:
    """index.html served below /viewer/: its absolute URLs moved there, no service worker."""
    text = text.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{BASE}"')
    text = re.sub(r'<script[^>]*init-service-worker\.js"[^>]*></script>', "", text)
    return re.sub(r'((?:src|href)=")/(?!/)', rf"\1{BASE}", text)


def _move_public_path(dist: Path) -> None:
    """Point webpack's public path (where chunks and workers load from) at /viewer/.

    The package is built to be served at the site's root: its bundles (the app's and each
    worker's) load chunks from ``/``, its CSS names fonts at ``/`` and its manifest icons at
    ``/assets``.
    """
    moved = 0
    for bundle in dist.glob("*.js"):
        text = bundle.read_text(encoding="utf-8")
        if _PUBLIC_PATH in text:
            bundle.write_text(text.replace(_PUBLIC_PATH, f'__webpack_require__.p = "{BASE}"'),
                              encoding="utf-8")
            moved += 1
    if not moved:
        raise ConfigError("this @ohif/app build cannot be served below /viewer/ (its webpack "
                          "public path was not found); use version 3.13.2")
    for sheet in dist.glob("*.css"):
        text = sheet.read_text(encoding="utf-8")
        sheet.write_text(re.sub(r"url\((['\"]?)/(?!/)", rf"url(\1{BASE}", text), encoding="utf-8")
    manifest = dist / "manifest.json"
    if manifest.is_file():
        text = manifest.read_text(encoding="utf-8")
        manifest.write_text(text.replace('"/assets/', f'"{BASE}assets/'), encoding="utf-8")


_PUBLIC_PATH = '__webpack_require__.p = "/"'


def viewer_ready(folder: Path | None) -> bool:
    """Whether ``folder`` holds a viewer installed by :func:`install_viewer`."""
    return folder is not None and (folder / _MARKER).is_file() and (folder / "index.html").is_file()


def _unpack(tarball: Path, into: Path) -> Path:
    try:
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            if not members:
                raise ConfigError(f"{tarball.name} holds no package/dist: not an @ohif/app package")
            archive.extractall(into, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ConfigError(f"the viewer package cannot be unpacked ({type(exc).__name__})") from None
    return into / "package" / "dist"


def _npm_pack(version: str, into: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError(
            "npm is not installed: install Node.js and npm (Debian: apt-get install npm), or "
            "pass a downloaded @ohif/app package as tarball"
        )
    try:
        done = subprocess.run(
            [npm, "pack", f"@ohif/app@{version}", "--pack-destination", str(into), "--silent"],
            capture_output=True, text=True, timeout=900, check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError("npm pack took longer than 15 minutes; check the npm registry") from None
    found = sorted(into.glob("ohif-app-*.tgz"))
    if done.returncode != 0 or not found:
        raise ConfigError(
            f"npm pack @ohif/app@{version} failed (exit {done.returncode}); check the version "
            "and that the npm registry is reachable"
        )
    return found[0]


def install_viewer(dest: Path, *, version: str = OHIF_VERSION, tarball: Path | None = None) -> Path:
    """Install OHIF ``version`` into ``dest`` (replacing an earlier install).

    Parameters
    ----------
    dest : Path
        The viewer folder (the server's ``viewer_dir``; ``<lake>/viewer`` by default).
    version : str
        The ``@ohif/app`` version from npm.
    tarball : Path, optional
        An already downloaded ``ohif-app-*.tgz`` (no npm needed).

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    ConfigError
        If npm is missing or fails, or the package is not OHIF's.
    """
    if not re.fullmatch(r"[0-9A-Za-z.+-]{1,40}", version):
        raise ConfigError("invalid viewer version: use a version such as 3.13.2")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".viewer-") as work:
        tmp = Path(work)
        package = tarball if tarball is not None else _npm_pack(version, tmp)
        dist = _unpack(Path(package), tmp / "unpacked")
        index = dist / "index.html"
        index.write_text(_rewrite_index(index.read_text(encoding="utf-8")), encoding="utf-8")
        (dist / "app-config.js").write_text(APP_CONFIG, encoding="utf-8")
        _move_public_path(dist)
        for name in ("sw.js", "init-service-worker.js"):
            (dist / name).unlink(missing_ok=True)
        (dist / _MARKER).write_text(f"@ohif/app {version}\n", encoding="utf-8")
        old = tmp / "old"
        if dest.exists():
            os.replace(dest, old)
        os.replace(dist, dest)
    return dest


class SpaFiles(StaticFiles):
    """The viewer's files; paths without a file (the viewer's own routes) get index.html."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404 or "." in path.rsplit("/", 1)[-1]:
                raise
            return await super().get_response("index.html", scope)
        if response.status_code == 404 and "." not in path.rsplit("/", 1)[-1]:
            return await super().get_response("index.html", scope)
        return response


async def viewer_missing(scope: Scope, receive: Receive, send: Send) -> None:
    """What /viewer/ answers before ``lake viewer install``."""
    response = Response(
        '{"error":"the viewer is not installed: run lake viewer install"}',
        status_code=404, media_type="application/json",
    )
    await response(scope, receive, send)


_UIDS = re.compile(r"^[0-9.,]{1,4096}$")


async def viewer_entry(request: Request, grant: Grant) -> Response:
    """``/viewer?token=T[&StudyInstanceUIDs=...]``: keep the token in a cookie, open the viewer.

    The token (already checked by the authorisation function, as for every route) goes into
    an HttpOnly, SameSite=Strict cookie that only authorises reading; the redirect drops it
    from the address bar.
    """
    target = BASE
    uids = request.query_params.get("StudyInstanceUIDs", "")
    if uids and _UIDS.match(uids):
        target = f"{BASE}viewer?StudyInstanceUIDs={uids}"
    response = RedirectResponse(target, status_code=303)
    token = request.query_params.get("token")
    if token:
        principal = grant.principal
        expires = principal.expires_at if principal is not None else None
        age = 12 * 3600
        if expires is not None:
            age = max(0, min(age, int((expires - dt.datetime.now(dt.UTC)).total_seconds())))
        response.set_cookie(
            TOKEN_COOKIE, token, max_age=age, path="/", httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response

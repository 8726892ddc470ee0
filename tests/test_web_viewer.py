"""OHIF in Debian's headless Chromium: the study list, then a CT study rendered from DICOMweb.

Needs ``chromium`` and ``chromedriver`` (Debian ``chromium``, ``chromium-driver``) and an
installed viewer (``lake viewer install --dest .viewer``, which ``.ci/run`` does; or
``LAKE_VIEWER_DIR``); skipped without them. Screenshots are kept in ``.artefacts/web/`` (or
``LAKE_TEST_ARTEFACTS``).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lake.web._viewer import viewer_ready
from tests.web_peers import build_web_lake, serving

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VIEWER = Path(os.environ.get("LAKE_VIEWER_DIR") or ROOT / ".viewer")
ARTEFACTS = Path(os.environ.get("LAKE_TEST_ARTEFACTS") or ROOT / ".artefacts" / "web")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-extensions", "--no-first-run",
         "--window-size=1280,900", "--enable-unsafe-swiftshader", "--use-angle=swiftshader")


def _browser(profile: Path) -> object:
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    if not viewer_ready(VIEWER):
        pytest.skip(f"no viewer in {VIEWER}: run 'lake viewer install --dest .viewer'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    # its profile in the test's folder: Chromium's own temporary one outlived quit() in /tmp
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(driver), options=options)


def _wait_for(predicate: object, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError("the page did not get there")


def test_ohif_shows_the_study_list_and_renders_a_ct(tmp_path: Path) -> None:
    browser: object = _browser(tmp_path / "chromium-profile")
    from selenium.webdriver.common.by import By

    driver: object = browser
    web = build_web_lake(tmp_path, slices=12)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with serving(web, viewer_dir=VIEWER) as (server, http):
            # A viewer link carries a token once; the server keeps it in a cookie.
            driver.get(f"{server.url}/viewer?token={web.tokens['researcher:a']}")  # type: ignore[attr-defined]
            assert driver.current_url == f"{server.url}/viewer/"  # type: ignore[attr-defined]
            body = lambda: driver.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]  # noqa: E731
            _wait_for(lambda: "Study List" in body() and "CT" in body())
            # The scoped token sees one study of the three.
            _wait_for(lambda: "1-1 of 1" in body() or "1 of 1" in body())
            driver.save_screenshot(str(ARTEFACTS / "study-list.png"))  # type: ignore[attr-defined]
            study = web.uids["a"][0]
            driver.get(f"{server.url}/viewer/viewer?StudyInstanceUIDs={study}")  # type: ignore[attr-defined]

            def rendered() -> bool:
                canvases = driver.find_elements(By.CSS_SELECTOR, "canvas.cornerstone-canvas")  # type: ignore[attr-defined]
                if not canvases:
                    return False
                shot = Image.open(io.BytesIO(canvases[0].screenshot_as_png)).convert("L")
                pixels = np.asarray(shot, dtype=np.float64)
                return bool(pixels.std() > 20 and len(np.unique(pixels)) > 64)

            _wait_for(rendered)
            driver.save_screenshot(str(ARTEFACTS / "ct-viewer.png"))  # type: ignore[attr-defined]
            canvas = driver.find_elements(By.CSS_SELECTOR, "canvas.cornerstone-canvas")[0]  # type: ignore[attr-defined]
            (ARTEFACTS / "ct-canvas.png").write_bytes(canvas.screenshot_as_png)
            # Outside the token's scope the viewer gets nothing.
            other = web.uids["b"][0]
            cookies = {c["name"]: c["value"] for c in driver.get_cookies()}  # type: ignore[attr-defined]
            assert cookies["lake_token"] == web.tokens["researcher:a"]
            http.cookies.set("lake_token", cookies["lake_token"])
            assert http.get(f"/dicomweb/studies/{study}/metadata").status_code == 200
            assert http.get(f"/dicomweb/studies/{other}/metadata").status_code == 404
    finally:
        driver.quit()  # type: ignore[attr-defined]


def _package(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    import tarfile

    files = {
        "package/dist/index.html": b'<script>window.PUBLIC_URL="/"</script>'
        b'<script rel="preload" as="script" type="module" src="/init-service-worker.js"></script>'
        b'<script defer src="/app.bundle.1.js"></script><link href="/app.bundle.css">',
        "package/dist/app.bundle.1.js": b'__webpack_require__.p = "/";',
        "package/dist/app.bundle.css": b"@font-face{src:url(/f.woff2)}",
        "package/dist/sw.js": b"",
        **(extra or {}),
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_viewer_install_moves_the_viewer_below_viewer(tmp_path: Path) -> None:
    from lake.web._viewer import install_viewer

    folder = install_viewer(tmp_path / "viewer", tarball=_package(tmp_path / "ohif.tgz"))
    assert viewer_ready(folder)
    index = (folder / "index.html").read_text()
    assert 'window.PUBLIC_URL="/viewer/"' in index and 'src="/viewer/app.bundle.1.js"' in index
    assert "init-service-worker" not in index and not (folder / "sw.js").exists()
    assert (folder / "app.bundle.1.js").read_text() == '__webpack_require__.p = "/viewer/";'
    assert "url(/viewer/f.woff2)" in (folder / "app.bundle.css").read_text()
    assert "/dicomweb" in (folder / "app-config.js").read_text()
    # Installing again replaces the folder.
    install_viewer(folder, tarball=_package(tmp_path / "again.tgz"))
    assert viewer_ready(folder)


def test_viewer_install_refuses_other_packages(tmp_path: Path) -> None:
    from lake import ConfigError
    from lake.web._viewer import install_viewer

    evil = _package(tmp_path / "evil.tgz", {"package/dist/../../../escape.txt": b"x"})
    with pytest.raises(ConfigError):
        install_viewer(tmp_path / "viewer", tarball=evil)
    assert not (tmp_path.parent / "escape.txt").exists()
    with pytest.raises(ConfigError, match="version"):
        install_viewer(tmp_path / "viewer", version="1; rm -rf /")


def test_viewer_link_sets_a_read_only_cookie(tmp_path: Path) -> None:
    web = build_web_lake(tmp_path, slices=1)
    with serving(web) as (_server, http):
        token = web.tokens["researcher"]
        response = http.get("/viewer", params={"token": token,
                                               "StudyInstanceUIDs": web.uids["a"][0]})
        assert response.status_code == 303
        assert response.headers["location"] == (
            f"/viewer/viewer?StudyInstanceUIDs={web.uids['a'][0]}")
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        odd = http.get("/viewer", params={"token": token, "StudyInstanceUIDs": "//evil.example"})
        assert odd.headers["location"] == "/viewer/"
        assert http.get("/viewer", params={"token": "lake_bad"}).status_code == 401
        missing = http.get("/viewer/")  # not installed here: a clear 404, no data
        assert missing.status_code == 404 and "lake viewer install" in missing.text

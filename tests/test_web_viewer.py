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


def _browser() -> object:
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
    return webdriver.Chrome(service=Service(driver), options=options)


def _wait_for(predicate: object, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError("the page did not get there")


def test_ohif_shows_the_study_list_and_renders_a_ct(tmp_path: Path) -> None:
    browser: object = _browser()
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

"""The portal in Debian's headless Chromium, driven by Selenium against ``lake serve web``.

Each role signs in and does its main task end to end: a student downloads a teaching set
and opens a case in the viewer; a researcher makes a cohort in the SQL console and
downloads its NIfTI export; a steward makes a share link, a reader opens it, the steward
revokes it and the link stops working. On every page visited, axe-core (npm, vendored by
``make tools`` into ``.tools/axe``, or ``LAKE_AXE_JS``) must find no serious or critical
accessibility violation; pages are also shot at a phone's width. Screenshots and the axe
reports go to ``.artefacts/portal/`` (or ``LAKE_TEST_ARTEFACTS``).

Needs ``chromium`` and ``chromedriver`` (skipped without them); the viewer part needs an
installed viewer (``.viewer`` or ``LAKE_VIEWER_DIR``), the accessibility part axe-core.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lake.web._viewer import viewer_ready
from tests.net_peers import stop_server
from tests.portal_peers import PortalLake, build_portal_lake

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VIEWER = Path(os.environ.get("LAKE_VIEWER_DIR") or ROOT / ".viewer")
AXE = Path(os.environ.get("LAKE_AXE_JS")
           or ROOT / ".tools" / "axe" / "node_modules" / "axe-core" / "axe.min.js")
ARTEFACTS = Path(os.environ.get("LAKE_TEST_ARTEFACTS") or ROOT / ".artefacts") / "portal"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-extensions", "--no-first-run",
         "--window-size=1280,900", "--enable-unsafe-swiftshader", "--use-angle=swiftshader")
PHONE = (390, 844)
AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ['violations']})
  .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                           nodes: v.nodes.map(n => n.target.join(' '))}))))
  .catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));
"""


def _wait_for(predicate: Callable[[], Any], seconds: float = 180.0) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except StaleElementReferenceException:  # the page reloaded meanwhile (a job finished)
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("the page did not get there")


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> PortalLake:
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    return build_portal_lake(tmp_path_factory.mktemp("portal-browser"))


@pytest.fixture(scope="module")
def server(portal: PortalLake) -> Iterator[str]:
    """``lake serve web`` on a free loopback port, stopped with SIGTERM."""
    args = [sys.executable, "-m", "pipelines.cli", "serve", "web", "--lake", portal.lake.root,
            "--port", "0", "--quiet"]
    if viewer_ready(VIEWER):
        args += ["--viewer-dir", str(VIEWER)]
    env = dict(os.environ, LAKE_VAULT=str(portal.web.vault))
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env, cwd=ROOT)
    try:
        assert proc.stderr is not None
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            found = re.search(r"serving (https?://[^/\s]+)/dicomweb", line)
            if found:
                url = found.group(1)
            elif not line and proc.poll() is not None:
                break
        assert url, "lake serve web did not start"
        yield url
    finally:
        stop_server(proc)


class Browser:
    """One Chromium with its own download folder, plus the axe findings of its pages."""

    def __init__(self, name: str, downloads: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for flag in FLAGS:
            options.add_argument(flag)
        downloads.mkdir(parents=True, exist_ok=True)
        # its profile in the test's folder: Chromium's own temporary one outlived quit() in /tmp
        options.add_argument(f"--user-data-dir={downloads.parent / f'chromium-{name}'}")
        options.add_experimental_option("prefs", {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        })
        self.driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")),
                                       options=options)
        self.driver.set_script_timeout(60)
        self.name = name
        self.downloads = downloads
        self.violations: dict[str, list[dict[str, Any]]] = {}

    def get(self, url: str) -> None:
        self.driver.get(url)

    @property
    def url(self) -> str:
        return str(self.driver.current_url)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def link(self, text: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.PARTIAL_LINK_TEXT, text)

    def check(self, label: str) -> None:
        """Shoot the page (laptop and phone widths) and run axe-core on it."""
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        shot = f"{self.name}-{label}"
        self.driver.save_screenshot(str(ARTEFACTS / f"{shot}.png"))
        if AXE.is_file():
            self.driver.execute_script(AXE.read_text(encoding="utf-8"))
            found = self.driver.execute_async_script(AXE_RUN)
            self.violations[shot] = found
        # a phone: its viewport, its pixel ratio, touch
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 2, "mobile": True})
        try:
            # nothing spills sideways out of the page (wide tables scroll in their own box)
            overflow = self.driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            self.driver.save_screenshot(str(ARTEFACTS / f"{shot}-phone.png"))
            if AXE.is_file():
                self.violations[shot + "-phone"] = self.driver.execute_async_script(AXE_RUN)
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        assert overflow <= 2, (shot, overflow)

    def serious(self) -> dict[str, list[dict[str, Any]]]:
        return {page: [v for v in found if v["impact"] in ("serious", "critical")]
                for page, found in self.violations.items()
                if any(v["impact"] in ("serious", "critical") for v in found)}

    def sign_in(self, base: str, name: str, password: str) -> None:
        self.get(base + "/portal/")
        _wait_for(lambda: "/portal/signin" in self.url)
        self.check("signin")
        self.find("#name").send_keys(name)
        self.find("#password").send_keys(password)
        self.find("form.stack button[type=submit]").click()
        _wait_for(lambda: "/portal/signin" not in self.url)

    def downloaded(self, suffix: str = ".zip") -> Path:
        def ready() -> Path | None:
            done = [p for p in self.downloads.iterdir()
                    if p.name.endswith(suffix) and not p.name.endswith(".crdownload")]
            return done[0] if done else None

        found: Path = _wait_for(ready)
        return found

    def quit(self) -> None:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        (ARTEFACTS / f"axe-{self.name}.json").write_text(
            json.dumps(self.violations, indent=1), encoding="utf-8")
        self.driver.quit()


@pytest.fixture
def browsers(tmp_path: Path) -> Iterator[Callable[[str], Browser]]:
    made: list[Browser] = []

    def make(name: str) -> Browser:
        browser = Browser(name, tmp_path / f"downloads-{name}")
        made.append(browser)
        return browser

    yield make
    for browser in made:
        browser.quit()


def _wait_job_download(browser: Browser) -> None:
    """On a job page: wait for the export, then click its download link."""
    _wait_for(lambda: "/portal/jobs/" in browser.url)
    browser.check("job")
    link = _wait_for(lambda: next((e for e in browser.finds("#job-download")
                                   if e.is_displayed()), None), seconds=300)
    browser.check("job-done")
    link.click()


def test_student_downloads_a_set_and_opens_a_case_in_the_viewer(
    portal: PortalLake, server: str, browsers: Callable[[str], Browser]
) -> None:
    student = browsers("student")
    student.sign_in(server, "stu", portal.passwords["stu"])
    assert student.url.endswith("/portal/teaching")
    student.check("teaching")
    student.link("teach").click()
    _wait_for(lambda: student.url.endswith("/portal/sets/teach"))
    # thumbnails come from DICOMweb with the session's scope
    _wait_for(lambda: student.driver.execute_script(
        "return Array.from(document.images).filter(i => i.src.includes('/thumbnail'))"
        ".every(i => i.complete && i.naturalWidth > 0)"))
    assert "Case 001" in student.find("main").text
    student.check("set")
    viewer_links = [e.get_attribute("href") for e in student.finds("a[href*='/viewer?']")]
    study = portal.web.uids["teach"][0]
    assert viewer_links and all(h.endswith(f"/viewer?StudyInstanceUIDs={study}")
                                for h in viewer_links)
    student.link("Download the whole set").click()
    _wait_job_download(student)
    zipped = student.downloaded()
    with zipfile.ZipFile(zipped) as archive:
        names = archive.namelist()
    assert "manifest.csv" in names and any(n.startswith("case-001/") for n in names)
    # one case, then the viewer
    student.get(server + "/portal/sets/teach")
    student.link("Download case 001").click()
    _wait_for(lambda: "/portal/jobs/" in student.url)
    student.get(server + "/portal/sets/teach")
    student.link("Open in the viewer").click()
    _wait_for(lambda: "/viewer" in student.url)
    if not viewer_ready(VIEWER):
        pytest.skip(f"no viewer in {VIEWER}: run 'lake viewer install --dest .viewer'")
    assert f"StudyInstanceUIDs={study}" in student.url

    def rendered() -> bool:
        canvases = student.finds("canvas.cornerstone-canvas")
        if not canvases:
            return False
        shot = Image.open(io.BytesIO(canvases[0].screenshot_as_png)).convert("L")
        pixels = np.asarray(shot, dtype=np.float64)
        return bool(pixels.std() > 20 and len(np.unique(pixels)) > 32)

    _wait_for(rendered)
    student.driver.save_screenshot(str(ARTEFACTS / "student-viewer.png"))
    assert not student.serious(), json.dumps(student.serious(), indent=1)


def test_researcher_makes_a_cohort_and_downloads_its_nifti_export(
    portal: PortalLake, server: str, browsers: Callable[[str], Browser]
) -> None:
    researcher = browsers("researcher")
    researcher.sign_in(server, "res", portal.passwords["res"])
    assert researcher.url.endswith("/portal/cohorts")
    researcher.check("cohorts")
    researcher.link("SQL console").click()
    _wait_for(lambda: researcher.url.endswith("/portal/console"))
    box = researcher.find("#sql")
    box.clear()
    box.send_keys("SELECT SeriesInstanceUID, Modality, instance_count FROM series "
                  "WHERE Modality = 'CT' AND instance_count = 3")
    researcher.find("form.stack button.primary").click()
    _wait_for(lambda: researcher.finds("table.results"))
    researcher.check("console")
    researcher.find("#cohort-name").send_keys("browser-ct")
    researcher.find("#cohort-description").send_keys("CT series of three slices")
    researcher.find("#cohort-name").submit()
    _wait_for(lambda: researcher.url.endswith("/portal/cohorts/browser-ct"))
    assert "CT series of three slices" in researcher.find("main").text
    researcher.check("cohort")
    from selenium.webdriver.support.ui import Select

    Select(researcher.find("#format")).select_by_value("nifti")
    researcher.find("form.row button.primary").click()
    _wait_job_download(researcher)
    zipped = researcher.downloaded()
    with zipfile.ZipFile(zipped) as archive:
        names = archive.namelist()
    assert any(n.endswith(".nii.gz") for n in names) and "manifest.json" in names
    researcher.link("Exports").click()
    _wait_for(lambda: researcher.url.endswith("/portal/exports"))
    researcher.check("exports")
    assert not researcher.serious(), json.dumps(researcher.serious(), indent=1)


def test_steward_revokes_a_share_link_and_it_stops_working(
    portal: PortalLake, server: str, browsers: Callable[[str], Browser]
) -> None:
    steward = browsers("steward")
    steward.sign_in(server, "boss", portal.passwords["boss"])
    assert steward.url.endswith("/portal/steward")
    steward.check("overview")
    for page in ("batches", "quarantine", "users", "tokens", "profiles", "profiles/basic",
                 "profiles/diff?a=basic&b=teaching", "audit"):
        steward.get(f"{server}/portal/steward/{page}")
        steward.check(page.split("?")[0].replace("/", "-"))
    steward.get(server + "/portal/steward/shares")
    from selenium.webdriver.support.ui import Select

    Select(steward.find("#share-cohort")).select_by_value("teach")
    Select(steward.find("#share-role")).select_by_value("student")
    steward.find("#share-expires").submit()
    url = _wait_for(lambda: steward.finds("#new-share")).pop().text.strip()
    assert re.fullmatch(re.escape(server) + r"/portal/s/lake_[0-9a-f]{16}_[\w-]{43}", url)
    steward.check("shares")
    share_id = url.rsplit("/", 1)[1].split("_")[1]

    reader = browsers("reader")
    reader.get(url)
    _wait_for(lambda: reader.url.endswith("/portal/sets/teach"))
    assert "Case 001" in reader.find("main").text
    reader.check("shared-set")

    steward.get(server + "/portal/steward/shares")
    form = steward.find(f"form[action='/portal/steward/shares/{share_id}/revoke']")
    form.find_element("css selector", "button").click()
    steward.driver.switch_to.alert.accept()
    _wait_for(lambda: steward.url.endswith("/portal/steward/shares"))
    _wait_for(lambda: "revoked" in steward.find("#shares tbody").text)

    reader.driver.refresh()
    _wait_for(lambda: "/portal/signin" in reader.url)
    reader.get(url)
    assert "not valid" in reader.find("main").text
    reader.check("revoked-link")
    assert not steward.serious(), json.dumps(steward.serious(), indent=1)
    assert not reader.serious(), json.dumps(reader.serious(), indent=1)

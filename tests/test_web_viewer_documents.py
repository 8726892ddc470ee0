"""OHIF in headless Chromium opens the lake's documents (issue 13.4: "the viewer shows the PDF and
plays the video"; tests/test_web_documents.py checks what OHIF asks for, not what it shows).

The PDF: OHIF's PDF viewport fetches the document and hands it to the browser in an
``<object type="application/pdf">``; headless Chromium has no PDF plugin to paint it, so the
test reads the object's data back and compares it with the served PDF. The video: OHIF's
viewport paints a frame on its canvas; the canvas must show the clip's colours (the CT series
of the same study is grey; with the CT series opened instead this check fails). That it plays:
OHIF's video viewport plays /rendered in an HTMLVideoElement it keeps off the page, so the test
plays the same URL in the same kind of element on the viewer's origin (time advances, frames
decode; a wrong URL fails). Not driven: OHIF's own cine control. Skipped without chromium,
chromedriver or an installed viewer (see tests/test_web_viewer.py).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import lake
from lake.access import create_token
from lake.ingest import ingest
from tests.documents_corpus import pdf_report, video
from tests.series import write_ct_series
from tests.test_web_viewer import ARTEFACTS, VIEWER, _browser, _wait_for
from tests.web_peers import WebLake, serving

pytestmark = pytest.mark.slow


def _documents_lake(root: Path) -> tuple[WebLake, dict[str, tuple[str, str]]]:
    lk = lake.init(root / "lake", vault=root / "vault")
    folder = root / "in" / "visit"
    write_ct_series(folder, 2, patient_id="OHIF-DOCS")
    (folder / "report.pdf").write_bytes(pdf_report(["CT chest", "no finding"] * 10))
    (folder / "clip.avi").write_bytes(video(seconds=2, fps=10))
    summary = ingest(lk, [str(folder)], lk.secret(root / "vault"), profile="research",
                     scheduler="sync")
    assert summary.ingested == 4, summary
    lk.refresh()
    web = WebLake(lk, root / "vault")
    web.tokens["steward"] = create_token(lk, "steward")[1]
    rows = lk.sql("SELECT document_mime_type, StudyInstanceUID, SeriesInstanceUID FROM instances "
                  "WHERE document_mime_type IS NOT NULL").fetchall()
    return web, {str(m): (str(st), str(se)) for m, st, se in rows}


_READ_OBJECT = """
const done = arguments[arguments.length - 1];
const object = document.querySelector('object[type="application/pdf"]');
fetch(object.data).then(r => r.arrayBuffer())
  .then(b => done(Array.from(new Uint8Array(b))))
  .catch(e => done(String(e)));
"""


_PLAY = """
const url = arguments[0];
const done = arguments[arguments.length - 1];
const v = document.createElement('video');
v.muted = true;
v.src = url;
const start = 0;
v.play().then(() => setTimeout(() => done({start: start, now: v.currentTime, paused: v.paused,
    width: v.videoWidth, height: v.videoHeight}), 1500))
  .catch(e => done({failed: String(e), error: v.error && v.error.code}));
"""


def test_ohif_opens_the_pdf_and_shows_the_video(tmp_path: Path) -> None:
    driver: Any = _browser(tmp_path / "chromium-profile")
    from selenium.webdriver.common.by import By

    web, documents = _documents_lake(tmp_path)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with serving(web, viewer_dir=VIEWER) as (server, http):
            driver.get(f"{server.url}/viewer?token={web.tokens['steward']}")
            study, series = documents["application/pdf"]
            driver.get(f"{server.url}/viewer/viewer?StudyInstanceUIDs={study}"
                       f"&initialSeriesInstanceUID={series}")
            _wait_for(lambda: driver.find_elements(
                By.CSS_SELECTOR, 'object[type="application/pdf"]'))
            driver.save_screenshot(str(ARTEFACTS / "ohif-pdf.png"))
            shown = driver.execute_async_script(_READ_OBJECT)
            assert isinstance(shown, list), shown
            (sop,) = web.lake.sql("SELECT SOPInstanceUID FROM instances WHERE "
                                  f"SeriesInstanceUID = '{series}'").fetchall()[0]
            served = http.get(
                f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered",
                headers={"Authorization": f"Bearer {web.tokens['steward']}",
                         "Accept": "application/pdf"}).content
            assert bytes(shown) == served and served.startswith(b"%PDF-")

            study, series = documents["video/mp4"]
            driver.get(f"{server.url}/viewer/viewer?StudyInstanceUIDs={study}"
                       f"&initialSeriesInstanceUID={series}")

            def coloured() -> bool:
                canvases = driver.find_elements(By.CSS_SELECTOR, "canvas")
                if not canvases:
                    return False
                shot = Image.open(io.BytesIO(canvases[0].screenshot_as_png)).convert("RGB")
                pixels = np.asarray(shot, dtype=np.float64)
                chroma = pixels.max(axis=2) - pixels.min(axis=2)  # 0 for grey (the CT)
                return bool(chroma.mean() > 20 and pixels.std() > 10)

            _wait_for(coloured)
            driver.save_screenshot(str(ARTEFACTS / "ohif-video.png"))
            # It plays: OHIF's video viewport (Cornerstone3D's VideoViewport) plays the instance's
            # /rendered MP4 in an HTMLVideoElement of its own, off the page; the same element
            # here, on the viewer's origin with the viewer's credentials, plays it: time
            # advances and decoded frames have the clip's size.
            (sop,) = web.lake.sql("SELECT SOPInstanceUID FROM instances WHERE "
                                  f"SeriesInstanceUID = '{series}'").fetchall()[0]
            url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered"
            probe = driver.execute_async_script(_PLAY, url)
            assert isinstance(probe, dict) and "failed" not in probe, probe
            assert not probe["paused"] and probe["now"] > probe["start"] + 0.3, probe
            assert probe["width"] > 0 and probe["height"] > 0, probe
    finally:
        driver.quit()

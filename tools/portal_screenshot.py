"""Take the README's portal screenshot (docs/portal.png) from the demo lake in headless Chromium.

    make demo
    .venv/bin/python tools/portal_screenshot.py [--lake .demo/lake --vault .demo/vault]

Opens the demo's teaching set through a share link made for the purpose (revoked at the
end) on a server on a free loopback port, and writes a small PNG.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from PIL import Image

import lake
from lake.access import create_share, revoke_share
from lake.web import WebConfig, WebServer

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lake", default=str(ROOT / ".demo" / "lake"))
    parser.add_argument("--vault", default=str(ROOT / ".demo" / "vault"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "portal.png"))
    parser.add_argument("--set", default="demo-teaching")
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    lk = lake.open(args.lake)
    share, token = create_share(lk, args.set, role="student", created_by="portal_screenshot")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,760",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        with WebServer(lk, WebConfig(port=0), lk.secret(args.vault)) as server:
            driver.get(f"{server.url}/portal/s/{token}")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not driver.execute_script(
                "return Array.from(document.images).every(i => i.complete && i.naturalWidth)"
            ):
                time.sleep(0.3)
            shot = Path(args.out).with_suffix(".full.png")
            driver.save_screenshot(str(shot))
    finally:
        driver.quit()
        revoke_share(lk, share.share_id)
    image = Image.open(shot).convert("RGB")
    image = image.resize((1024, image.height * 1024 // image.width), Image.Resampling.LANCZOS)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    shot.unlink()
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

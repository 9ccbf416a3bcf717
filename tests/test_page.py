"""The live page at / in a real browser: Debian's Chromium, headless, driven by Playwright.

The daemon runs as ``python -m edged run`` with a classification and a detection stream;
the page must show both streams, their results as they arrive over Server-Sent Events,
the snapshot with boxes, and the latency chart, and load nothing from anywhere else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.client import free_port, non_loopback_address
from support.configs import TOKEN, two_streams
from support.daemon import Daemon

pytestmark = pytest.mark.system  # Chromium and edged, each in a subprocess

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
# as the machine's own probe starts it: no sandbox (root), no GPU, no calls home
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip("playwright.sync_api")
if CHROMIUM is None:
    if os.environ.get("EDGED_REQUIRE_TOOLS") == "1":
        raise RuntimeError("chromium is not installed (apt-get install chromium) and EDGED_REQUIRE_TOOLS=1")
    pytest.skip("chromium not installed (apt-get install chromium)", allow_module_level=True)


def streams_config(testdata: Path, listen: str) -> dict:
    cfg = two_streams(testdata, listen, device="pagetest", demo_fps=15, det_fps=4)
    # the detector's stream has a zone over the image's upper half (where the kites fly)
    cfg["streams"][1]["zones"] = {"sky": {"coordinates": [[0.02, 0.02], [0.98, 0.02], [0.98, 0.5], [0.02, 0.5]]}}
    return cfg


@pytest.fixture(scope="module")
def browser():  # one Chromium for the module: each test opens its own page (its own context)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def watch(page) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {"requests": [], "errors": []}
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    return seen


def test_live_page_shows_streams_results_snapshot_and_chart(tmp_path, testdata, browser) -> None:
    port = free_port()
    d = Daemon(tmp_path, streams_config(testdata, f"127.0.0.1:{port}"))
    base = d.base
    try:
        d.wait_ready()
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        seen = watch(page)
        page.goto(base + "/")
        # a result of each stream appears: a digit for the demo, the kite for the detector
        page.wait_for_function(
            "() => /^[0-9]$/.test(document.querySelector('#stream-demo .results li.result span')?.textContent || '')",
            timeout=15000,
        )
        page.wait_for_function(
            "() => [...document.querySelectorAll('#stream-det .results li.result span')]"
            ".some(s => s.textContent === 'kite')",
            timeout=15000,
        )
        # the detector's objects are tracked: the page lists their events, with their track ids
        page.wait_for_function(
            "() => [...document.querySelectorAll('#stream-det .events li.event span')]"
            ".some(s => /^kite #[0-9]+/.test(s.textContent))",
            timeout=15000,
        )
        # and the snapshot draws the zone: its outline, red while a kite is in it (BGR 60, 60, 255)
        code, _, body = d.get("/api/v1/streams/det/snapshot.jpg")
        snap = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        red = np.all(np.abs(snap.astype(int) - (60, 60, 255)) < 50, axis=2)
        assert code == 200 and red[: snap.shape[0] // 2 + 10].sum() > 500, red.sum()
        # results keep arriving (SSE, not one fetch)
        first = int(page.get_attribute("#stream-demo", "data-seq"))
        page.wait_for_function(
            f"() => +document.querySelector('#stream-demo').dataset.seq > {first + 10}", timeout=10000
        )
        # the snapshot is the frame (1352 wide), loaded; the chart has points of both streams
        page.wait_for_function(
            "() => document.querySelector('#stream-det img.snap').naturalWidth === 1352", timeout=10000
        )
        page.wait_for_function(
            # 6 s of the demo's 15 fps: its line spans 6/120 of the chart's width at least
            "() => streams.get('demo').points.length > 90 && streams.get('det').points.length > 1",
            timeout=20000,
        )
        assert page.inner_text("#conn") == "live"
        assert page.inner_text("#device") == "pagetest"
        assert page.inner_text("#stream-demo .fps") not in ("", "-")
        # a chart frame drawn with them (every 500 ms): the demo's line, its colour #3e9bff, on the canvas
        page.wait_for_function(
            """() => {
                const c = document.querySelector('#chart');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4)
                    if (Math.abs(d[i] - 62) < 40 && Math.abs(d[i + 1] - 155) < 40 && Math.abs(d[i + 2] - 255) < 40
                        && d[i + 3] > 200) n++;
                return n > 30;
            }""",
            polling=100,
            timeout=5000,
        )
        png = page.screenshot(full_page=True)
        (tmp_path / "page.png").write_bytes(png)
        shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        # not blank: many colours and contrast (the snapshots, text, the chart)
        assert shot.std() > 20, shot.std()
        assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 2000
        # the chart drew the demo's line (its colour #3e9bff, in BGR)
        chart = page.locator("#chart").screenshot()
        chart_img = cv2.imdecode(np.frombuffer(chart, np.uint8), cv2.IMREAD_COLOR)
        blue = np.all(np.abs(chart_img.astype(int) - (255, 155, 62)) < 40, axis=2)
        assert blue.sum() > 30, blue.sum()
        # nothing loaded from anywhere but the device; no script errors
        # (blob: URLs are the snapshots the page fetched, handed to <img>)
        outside = [u for u in seen["requests"] if not u.startswith((base + "/", f"blob:{base}/"))]
        assert seen["requests"] and not outside, outside
        assert not seen["errors"], seen["errors"]
    finally:
        d.stop()


def test_live_page_asks_for_the_token_off_loopback(tmp_path, testdata, browser) -> None:
    host = non_loopback_address()
    port = free_port()
    d = Daemon(tmp_path, streams_config(testdata, f"{host}:{port}"), env={"EDGED_API_TOKEN": TOKEN})
    base = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    assert d.base == base
    try:
        d.wait_ready(TOKEN)
        page = browser.new_page()
        seen = watch(page)
        page.goto(base + "/")
        page.wait_for_selector("#login", state="visible", timeout=10000)
        assert not page.is_visible("#stream-demo")
        page.fill("#token", "not-the-token-0123456789")
        page.click("#loginform button")
        page.wait_for_function(
            "() => document.querySelector('#loginerr').textContent.includes('not accepted')", timeout=10000
        )
        page.fill("#token", TOKEN)
        page.click("#loginform button")
        page.wait_for_function(
            "() => /^[0-9]$/.test(document.querySelector('#stream-demo .results li.result span')?.textContent || '')",
            timeout=15000,
        )
        page.wait_for_function(
            "() => document.querySelector('#stream-det img.snap').naturalWidth === 1352", timeout=10000
        )
        assert page.inner_text("#conn") == "live"
        # the 401s of the wrong token are the browser's console errors; nothing else went wrong
        assert all("401" in e for e in seen["errors"]), seen["errors"]
    finally:
        d.stop()

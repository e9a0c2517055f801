"""Open vloc's HTML pages in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
and report what a person would see: JavaScript errors, counts of elements, load time, a screenshot.

Used by the report tests and ``benchmarks/report_size.py``; not by the library itself.
"""
from __future__ import annotations

import io
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

# Flags from this machine's notes: without the background-networking ones Chromium keeps trying
# to reach Google's hosts, which the closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class BrowserMissing(RuntimeError):
    pass


def chromium_path() -> str:
    """The Chromium executable (``$VLOC_CHROMIUM``, else ``chromium`` on PATH)."""
    path = os.environ.get("VLOC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise BrowserMissing("Chromium is not installed: run 'make test' as root (it installs the Debian package "
                             "chromium) or 'sudo apt-get install chromium', or set VLOC_CHROMIUM")
    return path


@dataclass
class PageCheck:
    load_seconds: float  # navigation start until the page said it rendered its figures
    errors: list[str] = field(default_factory=list)  # uncaught exceptions and console errors
    counts: dict[str, int] = field(default_factory=dict)  # CSS selector -> matching elements
    data: dict = field(default_factory=dict)  # the page's window.vlocData without its images
    screenshot: bytes = b""  # PNG

    def distinct_colours(self) -> int:
        """How many distinct RGB colours the screenshot has (a blank page has one or two)."""
        import numpy as np
        from PIL import Image

        rgb = np.asarray(Image.open(io.BytesIO(self.screenshot)).convert("RGB")).reshape(-1, 3).astype(np.int64)
        return len(np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]))


def check_page(path: Path | str, selectors: tuple[str, ...] = (), timeout_s: float = 60.0,
               viewport: tuple[int, int] = (1280, 900), scroll_to: str | None = None) -> PageCheck:
    """Open ``path`` (a local HTML file), wait until it sets ``body[data-rendered]``, then count
    ``selectors`` and take a screenshot of the viewport (scrolled to the first ``scroll_to``
    element when given)."""
    from playwright.sync_api import sync_playwright

    url = Path(path).resolve().as_uri()
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            t = time.perf_counter()
            page.goto(url, wait_until="load", timeout=timeout_s * 1000)
            page.wait_for_selector("body[data-rendered]", state="attached", timeout=timeout_s * 1000)
            load = time.perf_counter() - t
            errors += [f"page: {e}" for e in page.evaluate("window.vlocErrors || []")]
            counts = {s: page.locator(s).count() for s in selectors}
            data = page.evaluate("(() => { const d = Object.assign({}, window.vlocData || {}); delete d.thumbs; "
                                 "return d; })()")
            if scroll_to:
                page.locator(scroll_to).first.scroll_into_view_if_needed()
            shot = page.screenshot()
        finally:
            browser.close()
    return PageCheck(load, errors, counts, data, shot)

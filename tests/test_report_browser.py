"""The report as a person sees it: headless Chromium renders report.html, takes a screenshot,
and a script in the page checks that every image decoded and that no text overflows its
column (issue 13). Skipped, with the reason, where no Chromium is installed
(Debian: ``apt-get install chromium``; .ci/run installs it)."""

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1"]
WIDTH = 1280

# Runs after load: images decoded (naturalWidth > 0), and every element with a box stays inside
# the body's content column (or inside the scroll box that holds it), and no block spills its
# own text (scrollWidth > clientWidth with visible overflow). Results go into the DOM.
CHECKS = r"""
<script>
window.addEventListener('load', () => {
  const out = {images: 0, broken: [], overflow: [], height: document.documentElement.scrollHeight};
  const body = document.body, bs = getComputedStyle(body), br = body.getBoundingClientRect();
  const left = br.left + parseFloat(bs.paddingLeft) - 1, right = br.right - parseFloat(bs.paddingRight) + 1;
  const name = el => el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') +
      ' "' + (el.textContent || el.alt || '').trim().slice(0, 50) + '"';
  for (const img of document.images) {
    out.images += 1;
    if (!(img.complete && img.naturalWidth > 0)) out.broken.push(img.alt || img.src.slice(0, 40));
  }
  for (const el of body.querySelectorAll('*')) {
    if (el.id === 'physrl-checks' || el.closest('script,style')) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    const scroller = el.parentElement ? el.parentElement.closest('.scroll') : null;
    const box = scroller ? scroller.getBoundingClientRect() : {left: left, right: right};
    const clip = scroller ? 1 : 0;
    if (!scroller && (r.right > box.right + clip || r.left < box.left - clip)) {
      out.overflow.push('outside the column: ' + name(el) + ' right ' + Math.round(r.right) + ' > ' + Math.round(right));
    }
    const st = getComputedStyle(el);
    if (st.overflowX === 'visible' && el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1
        && st.display !== 'inline') {
      out.overflow.push('text spills out of ' + name(el) + ': ' + el.scrollWidth + ' > ' + el.clientWidth);
    }
  }
  const pre = document.createElement('pre');
  pre.id = 'physrl-checks';
  pre.textContent = JSON.stringify(out);
  body.appendChild(pre);
});
</script>
"""


def _browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, args: list[str], profile: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HOME": str(profile)})


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def render_and_check(report: Path, workdir: Path) -> tuple[dict, Path]:
    """Render ``report`` in headless Chromium; returns (the in-page checks, screenshot path)."""
    browser = _browser()
    page = workdir / "report_checked.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", CHECKS + "</body>"), encoding="utf-8")
    dom = _run(browser, ["--virtual-time-budget=10000", f"--window-size={WIDTH},1000", "--dump-dom",
                         page.as_uri()], workdir / "profile-dom")
    found = re.search(r'<pre id="physrl-checks">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the check script did not run; chromium said: {dom.stderr[-2000:]}"
    checks = json.loads(found.group(1).replace("&quot;", '"').replace("&gt;", ">").replace("&lt;", "<")
                        .replace("&amp;", "&"))
    shot = workdir / "report.png"
    height = min(int(checks["height"]) + 40, 16000)
    _run(browser, [f"--screenshot={shot}", f"--window-size={WIDTH},{height}", "--virtual-time-budget=10000",
                   report.resolve().as_uri()], workdir / "profile-shot")
    return checks, shot


@pytest.mark.skipif(_browser() is None, reason="no Chromium found (Debian: apt-get install chromium); "
                                               "the browser check of report.html is skipped")
def test_report_renders_with_every_image_decoded_and_no_text_overflowing(synthetic_scaling, tmp_path):
    out, _, _ = synthetic_scaling
    checks, shot = render_and_check(out / "report.html", tmp_path)
    keep = os.environ.get("PHYSRL_KEEP_SCREENSHOT")
    if keep:  # for a person to look at
        shutil.copy(shot, keep)
    assert checks["images"] >= 5
    assert checks["broken"] == []
    assert checks["overflow"] == [], "\n".join(checks["overflow"][:20])
    width, height = _png_size(shot)
    assert width == WIDTH and height > 2000

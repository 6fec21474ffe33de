"""Open a report's index.html in headless Chromium, check every plot renders, screenshot it.

    python scripts/check_html.py runs/demo/index.html --screenshot runs/demo/index.png

A copy of the page gets a small script that, once the page has loaded, lists every <img>
that failed to decode (``naturalWidth == 0``); Chromium's ``--dump-dom`` returns that list.
Exit code 0 when all images render, 1 when some do not, 2 when Chromium is missing
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.alt || i.src.slice(0, 40); });
  var widths = imgs.map(function (i) { return i.naturalWidth; });
  var pre = document.createElement('pre');
  pre.id = 'img-check';
  pre.textContent = 'IMGCHECK' + JSON.stringify({images: imgs.length, broken: bad,
                                                 widths: widths}) + 'ENDCHECK';
  document.body.appendChild(pre);
});
</script>"""


def find_chromium() -> str | None:
    """Path of a Chromium-like browser on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _flags(profile: str) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}",
            "--virtual-time-budget=10000"]


def check_html(index: str | Path, screenshot: str | Path | None = None,
               width: int = 1280, height: int = 4000, timeout: float = 120) -> dict:
    """Render ``index`` headless: {"images": n, "broken": [...], "widths": [...]}.

    Raises FileNotFoundError when no Chromium is installed.
    """
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH; install Debian's `chromium` package")
    index = Path(index).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        text = index.read_text()
        page.write_text(text.replace("</body>", PROBE + "</body>") if "</body>" in text
                        else text + PROBE)
        dom = subprocess.run([browser, *_flags(str(Path(tmp) / "p1")), "--dump-dom",
                              page.as_uri()], capture_output=True, text=True,
                             timeout=timeout).stdout
        found = re.search(r"IMGCHECK(\{.*?\})ENDCHECK", dom, re.S)
        if not found:
            raise RuntimeError("chromium did not load the page (no check result in the DOM)")
        result = json.loads(found.group(1))
        if screenshot is not None:
            shot = Path(screenshot).resolve()
            shot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([browser, *_flags(str(Path(tmp) / "p2")), f"--screenshot={shot}",
                            f"--window-size={width},{height}", index.as_uri()],
                           capture_output=True, timeout=timeout)
            result["screenshot"] = str(shot) if shot.is_file() else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", help="path of index.html")
    parser.add_argument("--screenshot", help="write a PNG screenshot here")
    parser.add_argument("--height", type=int, default=4000, help="screenshot height in pixels")
    args = parser.parse_args(argv)
    try:
        result = check_html(args.index, args.screenshot, height=args.height)
    except FileNotFoundError as err:
        print(f"check_html: {err}", file=sys.stderr)
        return 2
    print(f"{result['images']} images, {len(result['broken'])} broken"
          + (f": {result['broken']}" if result["broken"] else ""))
    if result.get("screenshot"):
        print(f"screenshot: {result['screenshot']}")
    return 1 if result["broken"] or not result["images"] else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Render a report.html in headless Chromium to a PNG and check that it rendered.

    python scripts/render_report.py studies/digits-quickstart/report.html --out studies/digits-quickstart/report.png

Chromium is Debian's package (``apt-get update && apt-get install -y chromium``) or any ``chromium`` /
``google-chrome`` on PATH (``--chromium PATH`` names another). The page is drawn in a window
``--width`` pixels wide and tall enough for the whole page (``--max-height`` at most); the white rows
under the content are cropped. The script exits 1, naming what failed, when:
- Chromium fails or writes no PNG;
- the PNG is not ``--width`` wide or is shorter than ``--min-height``;
- the page is blank (under 2 % of the pixels differ from the background, or fewer than 64 colours);
- Chromium logs any console message for the page (the report runs no script; its log does not say a
  message's level, so errors, failed loads and uncaught exceptions all count);
- an embedded image does not decode as a PNG, or the page loads anything from outside itself.
Exit 2: no Chromium found. On success it prints the PNG's path and size.
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def static_problems(page: str) -> list[str]:
    """What can be checked without a browser: every embedded image is a PNG, nothing is loaded from outside."""
    problems = []
    if re.search(r"""(src|href)=["']?(https?:|file:|//)""", page):
        problems.append("the page loads something from outside itself")
    for i, data in enumerate(re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)):
        try:
            with Image.open(io.BytesIO(base64.b64decode(data))) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001 (any decoding failure is the finding)
            problems.append(f"embedded image {i} does not decode ({type(e).__name__})")
    return problems


def console_errors(log: str) -> list[str]:
    """Console messages (Chromium's --enable-logging writes every one as ``INFO:CONSOLE``, errors, failed
    loads and uncaught exceptions included, without their level) and uncaught exceptions. The report runs
    no script, so any of them is a fault."""
    return [f"console: {line.strip()}" for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def render(html: Path, out: Path, *, chromium: str, width: int, max_height: int, timeout: int) -> str:
    """Screenshot ``html`` into ``out`` (uncropped); returns Chromium's log."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--hide-scrollbars", "--force-device-scale-factor=1", "--no-first-run", "--mute-audio",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
               f"--window-size={width},{max_height}", f"--screenshot={out}", html.resolve().as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"chromium exited with {res.returncode}: {res.stderr.strip().splitlines()[-1:]}")
    return res.stderr


def crop_background(png: Path, background: tuple[int, int, int] = (255, 255, 255)) -> tuple[int, int]:
    """Cut the rows under the content that are all background; returns the new (width, height)."""
    with Image.open(png) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    px = rgb.load()
    bottom = h
    while bottom > 1 and all(px[x, bottom - 1] == background for x in range(0, w, 2)):
        bottom -= 1
    rgb.crop((0, 0, w, min(h, bottom + 16))).save(png)
    return rgb.width, min(h, bottom + 16)


def blank(png: Path) -> str | None:
    """Why the screenshot looks blank, or None."""
    with Image.open(png) as im:
        rgb = im.convert("RGB")
        small = rgb.resize((max(1, rgb.width // 4), max(1, rgb.height // 4)))
    pixels = [small.getpixel((x, y)) for y in range(small.height) for x in range(small.width)]
    ink = sum(1 for p in pixels if p != (255, 255, 255)) / max(len(pixels), 1)
    colours = len(set(pixels))
    if ink < 0.02:
        return f"only {100 * ink:.1f} % of the page differs from white"
    if colours < 64:
        return f"only {colours} colours on the page"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", type=Path)
    p.add_argument("--out", type=Path, help="the PNG to write (default: the page's name with .png)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--max-height", type=int, default=12000)
    p.add_argument("--min-height", type=int, default=600)
    p.add_argument("--chromium", help="the browser's executable (default: chromium on PATH)")
    p.add_argument("--timeout", type=int, default=120)
    args = p.parse_args(argv)
    if not args.html.is_file():
        print(f"render_report: {args.html} does not exist", file=sys.stderr)
        return 2
    browser = find_chromium(args.chromium)
    if browser is None:
        print("render_report: no chromium found (apt-get install -y chromium, or --chromium PATH)", file=sys.stderr)
        return 2
    out = args.out or args.html.with_suffix(".png")
    problems = static_problems(args.html.read_text())
    try:
        log = render(args.html, out, chromium=browser, width=args.width, max_height=args.max_height,
                     timeout=args.timeout)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        print(f"render_report: {e}", file=sys.stderr)
        return 1
    if not out.is_file():
        print("render_report: chromium wrote no screenshot", file=sys.stderr)
        return 1
    width, height = crop_background(out)
    problems += console_errors(log)
    if width != args.width:
        problems.append(f"the screenshot is {width} px wide, not {args.width}")
    if height < args.min_height:
        problems.append(f"the page is only {height} px high (expected at least {args.min_height})")
    if height >= args.max_height:
        problems.append(f"the page is taller than --max-height {args.max_height}: the screenshot is cut")
    why = blank(out)
    if why:
        problems.append(f"the page looks blank: {why}")
    if problems:
        for line in problems:
            print(f"render_report: {line}", file=sys.stderr)
        return 1
    print(f"{out} ({width} x {height} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

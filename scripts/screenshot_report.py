"""Screenshot an HTML report for the README, after checking it is really offline.

    python scripts/screenshot_report.py sway-demo.html docs/

Opens the page from file:// in headless Chromium (the browser test's driver,
``tests/integration/chromium.py``), fails if it requested anything besides
itself or logged a console error or exception, then writes two PNGs 1200 px
wide into OUT_DIR:

- ``html-report.png``: the top of the page (runs table, the first run's header,
  probes and null panels);
- ``html-report-tokens.png``: the first run's per-token view, scrolled into view.

Each is cut shorter until it fits ``--max-kb`` so the repository stays small.
Exit 0 written, 1 the page broke a check, 2 bad arguments or no Chromium.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 1200
TOP_HEIGHT = 2600
TOKENS_HEIGHT = 1500


def _driver() -> ModuleType:
    """``tests/integration/chromium.py`` by path: ``tests`` is not importable from here."""
    path = ROOT / "tests" / "integration" / "chromium.py"
    spec = importlib.util.spec_from_file_location("sway_chromium_driver", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the Chromium driver at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _problems(page: Any, url: str) -> list[str]:
    """Everything that says the page is not a clean offline page."""
    out: list[str] = []
    requests = [e["request"]["url"] for e in page.of("Network.requestWillBeSent")]
    if requests != [url]:
        out.append(f"requests besides the page itself: {[r for r in requests if r != url]}")
    out += [f"failed request: {e}" for e in page.of("Network.loadingFailed")]
    out += [f"exception: {e}" for e in page.of("Runtime.exceptionThrown")]
    out += [
        f"console {e['type']}: {e.get('args')}"
        for e in page.of("Runtime.consoleAPICalled")
        if e.get("type") in ("error", "warning", "assert")
    ]
    out += [
        f"log error: {e['entry']}"
        for e in page.of("Log.entryAdded")
        if e["entry"]["level"] == "error"
    ]
    return out


def _shoot(page: Any, path: Path, *, top: int, height: int, max_bytes: int) -> int:
    """A clip from ``top``, at most ``height`` px, shortened by 15% until it fits."""
    while True:
        page.screenshot(path, width=WIDTH, max_height=height, top=top)
        size = path.stat().st_size
        if size <= max_bytes or height < 400:
            return size
        height = int(height * 0.85)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="a page written by --html or `sway report`")
    parser.add_argument("out_dir", type=Path, help="where the two PNGs go (e.g. docs/)")
    parser.add_argument("--max-kb", type=int, default=500, help="size cap per PNG (default 500)")
    args = parser.parse_args(argv)
    if not args.html.is_file():
        print(f"error: {args.html} is not a file; pass the report's path", file=sys.stderr)
        return 2
    if not args.out_dir.is_dir():
        print(f"error: {args.out_dir} is not a folder; create it first", file=sys.stderr)
        return 2
    driver = _driver()
    chromium = driver.find_chromium()
    if chromium is None:
        print("error: chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    url = args.html.resolve().as_uri()
    max_bytes = args.max_kb * 1024
    top_png = args.out_dir / "html-report.png"
    tokens_png = args.out_dir / "html-report-tokens.png"
    with driver.open_page(url, chromium=chromium) as page:
        page.send(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        tokens = page.evaluate(
            """(() => { const s = document.querySelector('[data-panel="tokens"]');
                 if (!s) return null;
                 s.scrollIntoView();
                 const r = s.getBoundingClientRect();
                 return JSON.stringify({top: Math.floor(r.top + window.scrollY),
                                        height: Math.ceil(r.height)}); })()"""
        )
        problems = _problems(page, url)
        if problems:
            print("the page is not a clean offline page:", *problems, sep="\n  ", file=sys.stderr)
            return 1
        if tokens is None:
            print("the page has no per-token view (no [data-panel=tokens])", file=sys.stderr)
            return 1
        box = json.loads(str(tokens))
        page.evaluate("window.scrollTo(0, 0)")
        sizes = {
            top_png: _shoot(page, top_png, top=0, height=TOP_HEIGHT, max_bytes=max_bytes),
            tokens_png: _shoot(
                page,
                tokens_png,
                top=box["top"],
                height=min(box["height"], TOKENS_HEIGHT),
                max_bytes=max_bytes,
            ),
        }
        late = _problems(page, url)
    if late:
        print("the page broke a check while shooting:", *late, sep="\n  ", file=sys.stderr)
        return 1
    page_kb = args.html.stat().st_size / 1024
    print(f"{args.html}: {page_kb:.0f} KB, no request besides itself, no console error")
    for path, size in sizes.items():
        print(f"wrote {path} ({size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Screenshots, in headless Chromium, of what a user watches: TensorBoard during a tiny run, and a report.html.

    .venv/bin/python bench/screenshots.py --out bench/screenshots                       # TensorBoard only
    .venv/bin/python bench/screenshots.py --out bench/screenshots --report runs/<run-id>/bundle/report.html

1. Starts ``semcode run --preset tiny --tensorboard`` in a scratch --runs-dir, reads the TensorBoard address
   it prints, waits until TensorBoard serves the encoder's ``encoder/train/loss`` with more than one point (while
   the run goes on), and screenshots TensorBoard's time-series dashboard filtered to it; then lets the
   run finish. Prints how many loss points TensorBoard had when the picture was taken.
2. With ``--report``, screenshots that report.html (a local-preset run's, say) too.
3. With ``--page BUNDLE`` (only that): starts ``semcode serve BUNDLE`` and screenshots its search page
   empty, with the results of ``--page-query``, and filtered to ``--page-language``
   (search-page-empty.png, search-page-results.png, search-page-filtered.png):

       .venv/bin/python bench/screenshots.py --page ./myrepo-index --page-language go

Chromium comes from Debian's ``chromium`` package (``apt-get install chromium``); ``--chromium`` names
another binary. The PNG files go to ``--out``; look at them, they are the check.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

URL_LINE = re.compile(r"\[run\] tensorboard: (http://127\.0\.0\.1:\d+/)")
LOSS_TAG = "encoder/train/loss"


def screenshot(chromium: str, url: str, out: Path, width: int = 1400, height: int = 1000) -> Path:
    """A PNG of ``url`` after its scripts had 15 s (virtual time) to fetch and draw."""
    command = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    command += [f"--window-size={width},{height}", "--virtual-time-budget=15000", f"--screenshot={out}", url]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return out


def loss_points(url: str) -> int:
    """Points TensorBoard serves for the encoder's encoder/train/loss (0 while it has none)."""
    try:
        with urllib.request.urlopen(url + "data/plugin/scalars/tags", timeout=5) as response:
            tags = json.loads(response.read())
    except OSError:
        return 0
    runs = [run for run, run_tags in tags.items() if LOSS_TAG in run_tags and run.startswith("encoder")]
    if not runs:
        return 0
    query = urllib.parse.urlencode({"run": runs[0], "tag": LOSS_TAG})
    with urllib.request.urlopen(f"{url}data/plugin/scalars/scalars?{query}", timeout=5) as response:
        return len(json.loads(response.read()))


def tensorboard_during_a_tiny_run(chromium: str, out_dir: Path) -> tuple[Path, int]:
    semcode = str(Path(sys.executable).parent / "semcode")
    runs = Path(tempfile.mkdtemp(prefix="semcode-screenshot-"))
    command = [
        semcode,
        "run",
        "--preset",
        "tiny",
        "--tensorboard",
        "--runs-dir",
        str(runs),
        "--run-id",
        "shot",
    ]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, points = None, 0
    try:
        for line in run.stderr:
            match = URL_LINE.search(line)
            if match:
                url = match.group(1)
                break
        threading.Thread(target=lambda: [None for _ in run.stderr], daemon=True).start()  # keep it drained
        deadline = time.monotonic() + 300
        while url and points < 2 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(1)
            points = loss_points(url)
        if not url or points < 2:
            raise SystemExit(
                f"TensorBoard never served two points of {LOSS_TAG} (url {url}, run rc {run.poll()})"
            )
        # TensorBoard's time-series page groups the cards by tag prefix: rank/, then train/ (the loss).
        shot = screenshot(chromium, url + "#timeseries", out_dir / "tensorboard.png", height=2600)
        run.wait()  # let the run finish
        return shot, points
    finally:
        if run.poll() is None:
            run.terminate()
        shutil.rmtree(runs, ignore_errors=True)


def search_page(chromium: str, bundle: str, query: str, language: str, out_dir: Path) -> list[Path]:
    """``semcode serve bundle`` on a free port; the page empty, with results, and filtered to ``language``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    semcode = str(Path(sys.executable).parent / "semcode")
    command = [semcode, "serve", bundle, "--port", str(port), "--threads", "1", "--log-level", "warning"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "readyz", timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit(f"semcode serve {bundle} was not ready within 120 s")
        pages = {  # name: (query string, height)
            "search-page-empty.png": ("", 400),
            "search-page-results.png": ("?" + urllib.parse.urlencode({"q": query}), 1400),
            "search-page-filtered.png": (
                "?" + urllib.parse.urlencode({"q": query, "language": language}),
                1400,
            ),
        }
        return [
            screenshot(chromium, base + what, out_dir / name, 1200, height)
            for name, (what, height) in pages.items()
        ]
    finally:
        server.terminate()
        server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench/screenshots"))
    parser.add_argument("--report", type=Path, default=None, help="also screenshot this report.html")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--page", default=None, metavar="BUNDLE", help="only the search page, serving BUNDLE")
    parser.add_argument("--page-query", default="read a file line by line")
    parser.add_argument("--page-language", default="go", help="the filtered screenshot's language")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.page:
        shots = search_page(args.chromium, args.page, args.page_query, args.page_language, args.out)
        print(json.dumps({"search_page": [str(shot) for shot in shots]}))
        return 0
    shot, points = tensorboard_during_a_tiny_run(args.chromium, args.out)
    print(json.dumps({"tensorboard": str(shot), "train_loss_points_when_taken": points}))
    if args.report:
        report = screenshot(
            args.chromium, args.report.resolve().as_uri(), args.out / "report.png", height=4000
        )
        print(json.dumps({"report": str(report)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

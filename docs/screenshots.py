"""Take the README's screenshots of the web app in a headless Chromium: the formula builder (at 1280×800 and on a
390×844 phone screen), and a search in progress.

    python docs/screenshots.py          # SmolLM2, writes docs/builder.png, docs/builder-narrow.png, docs/search.png
    python docs/screenshots.py --model random:tiny --nsamples 4 --seqlen 64   # quick check of the script

Launches the app on a free port with a throw-away history, drives it as a user would (load and score, build a
function, start a search and capture it while it runs, then stop it).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FUNCTION = "W:(ABSLOG)-(Q99)-(ATAN)-(BAND=0.1)"


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--generations", type=int, default=4, help="search generations to wait for before capturing")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as folder, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        demo = app.create_app(f"sqlite:///{folder}/history.db")
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **{k: v for k, v in app.launch_options(app.build_parser().parse_args([])).items()
                       if k in ("theme", "css")})
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(30 * 60 * 1000)  # scoring a real model on a CPU takes minutes
                page.goto(f"http://127.0.0.1:{port}/")
                model = page.locator("#model input")
                model.click()
                model.fill(args.model)
                model.press("Enter")
                page.locator("#nsamples input").fill(str(args.nsamples))
                page.locator("#seqlen input").fill(str(args.seqlen))
                page.locator("#load").click()
                page.wait_for_function("() => document.querySelector('#model-status').innerText.includes('Ready')")

                page.get_by_role("tab", name="Formula builder").click()
                text = page.locator("#function-text input, #function-text textarea").first
                text.fill(FUNCTION)
                text.press("Enter")
                page.wait_for_function("([f]) => document.querySelector('#function-text textarea, "
                                       "#function-text input').value === f", arg=[FUNCTION])
                page.wait_for_timeout(1500)  # the chart redraws after the text
                page.screenshot(path=str(args.out / "builder.png"), full_page=True)
                page.set_viewport_size({"width": 390, "height": 844})  # a phone: the profile under the controls
                page.wait_for_timeout(1500)
                page.locator("#profile-plot").scroll_into_view_if_needed()
                page.screenshot(path=str(args.out / "builder-narrow.png"))
                page.set_viewport_size({"width": 1280, "height": 800})

                page.get_by_role("tab", name="Search").click()
                page.locator("#population input").fill("8")
                page.locator("#budget input").fill("400")
                page.locator("#fitness-windows input").fill("1")
                page.locator("#search-start").click()
                page.wait_for_function(
                    "([g]) => { const d = document.querySelector('#search-progress .js-plotly-plot');"
                    " return d && d.data && d.data.length >= 3 && d.data[1].x.length >= g; }", arg=[args.generations])
                page.wait_for_timeout(1000)
                page.screenshot(path=str(args.out / "search.png"), full_page=True)
                page.locator("#search-stop").click()
                page.wait_for_function("() => document.querySelector('#search-status').innerText.includes('stopped')")
                browser.close()
        finally:
            demo.close()
    print(f"wrote {', '.join(str(args.out / n) for n in ('builder.png', 'builder-narrow.png', 'search.png'))}")


if __name__ == "__main__":
    main()

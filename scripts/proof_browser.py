"""The live widget in a real browser: JupyterLab and Notebook 7, driven by headless Chromium.

    python scripts/proof_browser.py                 # both frontends, the figures on stdout
    python scripts/proof_browser.py --ui lab        # JupyterLab only

It installs nothing. It needs, beside theia_frames with its ``widget`` extra:

    apt-get install -y chromium chromium-driver     # Debian: the browser and its driver
    pip install 'theia-frames[widget,browser]'      # selenium, jupyterlab, notebook (and ipympl)

What it does, per frontend: an embedded collector runs in this process, fed
with sensor readings at 200 events/s (two sources, time-stamped now); a Jupyter
server (``--allow-root``, a token, a free loopback port) serves a notebook
whose first cell makes ``tf.live_plot(...)``; Chromium runs the cells as a
user would (Shift+Enter) and the proof reads what the page shows:

1. live updates: the share of the plot's pixels that changed in 5 s;
2. pause: after a click on Pause, the pixels that changed in 5 s (must be 0);
3. a collector stop: the collector is stopped for ``--outage`` seconds and
   started again on the same port and database; the plot then shows the
   outage shaded, and no pixel of a line crosses the middle of the shading;
4. re-running the first cell: ``len(tf.live_frames())`` printed by the next
   cell (must be 1: the earlier run's frame was stopped);
5. interactive zoom: a cell makes ``tf.live_plot(..., interactive=True)``
   (ipympl); the proof clicks the zoom tool, drags a rectangle over the
   canvas, and a cell prints the x range of the plot before and after.

The figures are printed as one line per frontend and as JSON; a failed check
exits 1 naming it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the collector and its feed


class Feed:
    """A collector on a fixed port and database, and readings sent to it at ``rate`` per second, time-stamped now."""

    def __init__(self, folder: Path, rate: float = 200.0) -> None:
        import theia_frames as tf

        self.tf = tf
        self.db = folder / "events.db"
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.rate = rate
        self.collector: Any = tf.serve(db=self.db, port=self.port)
        self.sent = 0
        self.skipped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tf = self.tf
        readings = tf.sensor_events(None, sources=2, rate=self.rate, start=time.time(), seed=5)
        client = None
        while not self._stop.wait(0.1):
            due = []
            now = time.time()
            for event in readings:
                due.append(event)
                if event.timestamp >= now:
                    break
            try:
                if client is None:
                    client = tf.Client(self.url, timeout=2)
                client.send_many(due)
                self.sent += len(due)
            except tf.TheiaError:
                self.skipped += len(due)  # the collector is away: these readings are never stored
                if client is not None:
                    try:
                        client.close()
                    except tf.TheiaError:
                        pass
                client = None
        if client is not None:
            client.close()

    def outage(self, seconds: float, meanwhile: Any = None) -> tuple[float, float]:
        """Stop the collector for ``seconds``, call ``meanwhile()`` halfway, start it again."""
        started = time.time()
        self.collector.stop()
        time.sleep(seconds / 2)
        if meanwhile is not None:
            meanwhile()
        time.sleep(max(0.0, started + seconds - time.time()))
        self.collector = self.tf.serve(db=self.db, port=self.port)
        return started, time.time()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.collector.stop()


# --------------------------------------------------------------------------- the notebook and the browser


def notebook(url: str) -> dict[str, Any]:
    cells = [
        "import theia_frames as tf\n"
        f"view = tf.live_plot({url!r}, tf.Filter().match_tag('sensor'), window='10min', every=0.5)\n"
        "view",
        "print('outages:', len(view.live.outages), 'running frames:', len(tf.live_frames()))",
        f"iview = tf.live_plot({url!r}, tf.Filter().match_tag('sensor'), window='10min', every=0.5, interactive=True)\n"
        "iview",
        "import time; time.sleep(1.0)\n"
        "print('xlim', *iview._figure.axes[0].get_xlim(), 'zoomed', iview._plotter.user_zoomed)",
        "print('stopped', tf.stop_all())",
    ]
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell-{i}", "metadata": {}, "outputs": [],
                   "source": source} for i, source in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


class Jupyter:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.token = "theia-proof"
        self.log = open(folder / "jupyter.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", f"--port={self.port}",
             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={folder}",
             "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=True"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=folder,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the Jupyter server did not listen on port {self.port}; see {folder / 'jupyter.log'}")

    def page(self, ui: str, name: str) -> str:
        path = f"lab/tree/{name}" if ui == "lab" else f"notebooks/{name}"
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


class Page:
    def __init__(self, driver: Any, url: str) -> None:
        from selenium.webdriver.common.by import By

        self.By = By
        self.driver = driver
        driver.get(url)
        self.wait_for(lambda: len(self.cells()) >= 5, 90, "the notebook's cells")
        self.wait_for(lambda: self.kernel_idle(), 90, "the kernel")

    def wait_for(self, condition: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = condition()
            except Exception:
                value = None
            if value:
                return value
            time.sleep(0.25)
        shot = Path(tempfile.gettempdir()) / "theia-proof-browser-failure.png"
        self.driver.save_screenshot(str(shot))
        raise SystemExit(f"proof_browser: timed out waiting for {what} (the page as it was: {shot})")

    def cells(self) -> list[Any]:
        return self.driver.find_elements(self.By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")

    def kernel_idle(self) -> bool:
        return bool(self.driver.execute_script(
            "return !!document.querySelector('.jp-Notebook') && "
            "!document.querySelector('.jp-Notebook .jp-InputArea-prompt:not(:empty)')?.textContent?.includes('*')"))

    def run(self, index: int) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        cell = self.cells()[index]
        editor = cell.find_element(self.By.CSS_SELECTOR, ".jp-InputArea-editor")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", cell)
        editor.click()
        ActionChains(self.driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()

    def output_text(self, index: int) -> str:
        outputs = self.cells()[index].find_elements(self.By.CSS_SELECTOR, ".jp-OutputArea-output")
        return "\n".join(o.text for o in outputs)

    def prompt(self, index: int) -> str:
        return str(self.cells()[index].find_element(self.By.CSS_SELECTOR, ".jp-InputArea-prompt").text)

    def run_for_text(self, index: int, word: str, timeout: float = 60) -> str:
        """Run a cell and return its output once this run has finished (its execution count changed)."""
        before = self.prompt(index)
        self.run(index)

        def done() -> str | None:
            prompt, text = self.prompt(index), self.output_text(index)
            return text if prompt != before and "*" not in prompt and word in text else None

        return str(self.wait_for(done, timeout, f"the output of cell {index}"))

    def image(self, index: int) -> Any:
        return self.cells()[index].find_element(self.By.CSS_SELECTOR, ".jp-OutputArea-output img")

    def shot(self, element: Any) -> np.ndarray:
        from PIL import Image

        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(int)

    def button(self, index: int, label: str) -> Any:
        for b in self.cells()[index].find_elements(self.By.CSS_SELECTOR, "button"):
            if b.text.strip() == label:
                return b
        raise SystemExit(f"proof_browser: no {label!r} button in cell {index}")


def changed(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b).sum(axis=2) > 0).mean())


def line_across_outage(img: np.ndarray) -> tuple[int, int]:
    """(columns shaded as the outage, line pixels in the middle third of them).

    The shading is the outage colour (#ef8a30 at 18 %) over the page; a line is
    one of the series' saturated colours. Columns are shaded where most of
    their pixels are a faint orange."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    faint_orange = (r - b > 12) & (r - b < 70) & (r > 200) & (g > 190)
    shaded = np.flatnonzero(faint_orange.mean(axis=0) > 0.3)
    if not len(shaded):
        return 0, -1
    # the widest run of shaded columns
    runs = np.split(shaded, np.flatnonzero(np.diff(shaded) > 1) + 1)
    run = max(runs, key=len)
    third = max(len(run) // 3, 1)
    middle = run[third:-third] if len(run) > 2 * third else run
    block = img[:, middle]
    saturation = block.max(axis=2) - block.min(axis=2)
    line = (saturation > 90) & ~faint_orange[:, middle]
    return len(run), int(line.sum())


# --------------------------------------------------------------------------- one frontend


def prove(ui: str, jupyter: Jupyter, folder: Path, feed: Feed, driver: Any, outage: float,
          shots: Path | None) -> dict[str, Any]:
    name = f"proof-{ui}.ipynb"
    (folder / name).write_text(json.dumps(notebook(feed.url)))
    page = Page(driver, jupyter.page(ui, name))
    figures: dict[str, Any] = {"ui": ui}
    say = lambda what: print(f"[{ui}] {what}", file=sys.stderr, flush=True)  # noqa: E731

    page.run(0)
    img = page.wait_for(lambda: page.image(0), 90, "the live plot")
    time.sleep(3)
    a = page.shot(img)
    time.sleep(5)
    b = page.shot(page.image(0))
    figures["live_changed_5s"] = changed(a, b)

    say('page.button(0, "Pause").click()')
    page.button(0, "Pause").click()
    time.sleep(1.5)
    a = page.shot(page.image(0))
    time.sleep(5)
    b = page.shot(page.image(0))
    figures["paused_changed_pixels"] = int((np.abs(a - b).sum(axis=2) > 0).sum())
    page.button(0, "Resume").click()
    time.sleep(3)

    say('started, ended = feed.outage(outage)')
    def while_away() -> None:
        status = page.cells()[0].find_element(page.By.CSS_SELECTOR, ".widget-html")
        figures["status_while_away"] = status.text
        figures["status_height_while_away_px"] = status.size["height"]

    started, ended = feed.outage(outage, while_away)
    figures["outage_s"] = round(ended - started, 1)
    page.wait_for(lambda: "live" in page.cells()[0].find_element(page.By.CSS_SELECTOR, ".widget-html").text
                  and "reconnect" not in page.cells()[0].find_element(page.By.CSS_SELECTOR, ".widget-html").text,
                  60, "the status line to say live again")
    time.sleep(outage + 2)  # readings after the outage, as long as it lasted
    img = page.shot(page.image(0))
    if shots is not None:
        from PIL import Image

        Image.fromarray(img.astype("uint8")).save(shots / f"{ui}-after-outage.png")
    columns, crossing = line_across_outage(img)
    figures["outage_shaded_columns"] = columns
    figures["line_pixels_across_outage"] = crossing
    figures["status_line_height_px"] = page.cells()[0].find_element(page.By.CSS_SELECTOR, ".widget-html").size["height"]

    say('text = page.run_for_text(1, "running frames")')
    text = page.run_for_text(1, "running frames")
    figures["frames_before_rerun"] = int(text.split(":")[-1])
    figures["outages_seen_by_the_frame"] = int(text.split()[1])
    page.run(0)
    time.sleep(4)
    text = page.run_for_text(1, "running frames")
    figures["frames_after_rerun"] = int(text.split(":")[-1])

    say('page.run(2)')
    page.run(2)
    canvas = page.wait_for(
        lambda: page.cells()[2].find_element(page.By.CSS_SELECTOR, "canvas.mpl-canvas, .jupyter-matplotlib-canvas-div canvas"),
        90, "the interactive canvas")
    time.sleep(3)
    before = page.run_for_text(3, "xlim").split()
    zoom = page.wait_for(lambda: [b for b in page.cells()[2].find_elements(page.By.CSS_SELECTOR, "button")
                                  if (b.get_attribute("title") or "").startswith("Zoom")], 30, "the zoom tool")[0]
    page.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", canvas)
    zoom.click()
    from selenium.webdriver.common.action_chains import ActionChains

    w, h = canvas.size["width"], canvas.size["height"]
    (ActionChains(page.driver).move_to_element_with_offset(canvas, int(-w * 0.2), int(-h * 0.3)).click_and_hold()
     .move_by_offset(int(w * 0.15), int(h * 0.1)).move_by_offset(int(w * 0.1), int(h * 0.05)).release().perform())
    time.sleep(2)
    if shots is not None:
        page.driver.save_screenshot(str(shots / f"{ui}-zoomed.png"))
    after = page.run_for_text(3, "xlim").split()
    span_before = float(before[2]) - float(before[1])
    span_after = float(after[2]) - float(after[1])
    figures["zoom_span_ratio"] = round(span_after / span_before, 3)
    figures["zoom_kept_while_live"] = after[-1] == "True"
    say('page.run_for_text(4, "stopped")')
    page.run_for_text(4, "stopped")
    return figures


def check(figures: dict[str, Any]) -> list[str]:
    failed = []
    if not figures["live_changed_5s"] > 0:
        failed.append("the plot did not change while events arrived")
    if figures["outages_seen_by_the_frame"] != 1:
        failed.append("the frame did not record the collector's stop as one outage")
    if figures["paused_changed_pixels"] != 0:
        failed.append("the plot changed while paused")
    if figures["outage_shaded_columns"] < 3 or figures["line_pixels_across_outage"] != 0:
        failed.append("the outage is not drawn as a shaded break")
    if "reconnecting" not in figures["status_while_away"] or figures["status_height_while_away_px"] > 40:
        failed.append("the status line did not say reconnecting on one line while the collector was away")
    if figures["frames_after_rerun"] != figures["frames_before_rerun"]:
        failed.append("re-running the cell left another frame running")
    if not figures["zoom_span_ratio"] < 0.9:
        failed.append("the zoom did not narrow the visible range")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ui", choices=("lab", "notebook", "both"), default="both")
    parser.add_argument("--outage", type=float, default=8.0, help="seconds the collector is stopped")
    parser.add_argument("--shots", type=Path, default=None, help="a folder to keep screenshots in")
    args = parser.parse_args()
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            print(f"proof_browser: {tool} is not installed (apt-get install -y chromium chromium-driver)", file=sys.stderr)
            return 2
    results = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="theia-browser-") as tmp:
        folder = Path(tmp)
        jupyter = Jupyter(folder)
        driver = browser()
        try:
            for ui in (("lab", "notebook") if args.ui == "both" else (args.ui,)):
                (folder / ui).mkdir()
                feed = Feed(folder / ui)
                try:
                    figures = prove(ui, jupyter, folder, feed, driver, args.outage, args.shots)
                finally:
                    feed.close()
                figures["events_sent"] = feed.sent
                results.append(figures)
                print(f"{ui}: live {figures['live_changed_5s']:.1%} of pixels changed in 5 s; paused "
                      f"{figures['paused_changed_pixels']} changed pixels in 5 s; a {figures['outage_s']} s collector "
                      f"stop shaded over {figures['outage_shaded_columns']} px with {figures['line_pixels_across_outage']} "
                      f"line pixels across it; frames running {figures['frames_before_rerun']} before and "
                      f"{figures['frames_after_rerun']} after re-running the cell; zoom: visible range x"
                      f"{figures['zoom_span_ratio']}, kept while live: {figures['zoom_kept_while_live']}; status line "
                      f"{figures['status_line_height_px']} px high, {figures['status_height_while_away_px']} px while "
                      f"away ({figures['status_while_away']!r})", flush=True)
                failed += [f"{ui}: {f}" for f in check(figures)]
        finally:
            driver.quit()
            jupyter.close()
    print(json.dumps(results))
    for f in failed:
        print(f"proof_browser: FAILED: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

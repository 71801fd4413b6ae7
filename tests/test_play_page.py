"""The play page in headless Chromium: load it, press keys, see new frames.

Drives Chromium through chromedriver's W3C WebDriver HTTP protocol with urllib (no Selenium).
Skips where Chromium or chromedriver is not installed (Debian: apt-get install chromium
chromium-driver; .ci/run installs them when it can).
"""
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from model.trained import load_trained_model
from utils.play.actions import dataset_start_frames, load_start_image
from utils.play.server import PlayServer, ServerLimits, UsualShifts, create_http_server, serve_in_thread

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path), None)
pytestmark = pytest.mark.skipif(CHROMEDRIVER is None or CHROMIUM is None,
                                reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver)")
ARROW_RIGHT, ARROW_UP = "\ue014", "\ue013"  # WebDriver key codes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WebDriver:
    """The few WebDriver commands the test needs, over HTTP."""

    def __init__(self, url: str):
        self.url = url
        capabilities = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                         "--window-size=1100,900"]}}
        self.session = self.command("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})["sessionId"]

    def command(self, method: str, path: str, payload=None):
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise AssertionError(f"WebDriver {method} {path}: {error.read()[:500]!r}") from None

    def session_command(self, method: str, path: str, payload=None):
        return self.command(method, f"/session/{self.session}{path}", payload)

    def script(self, source: str):
        return self.session_command("POST", "/execute/sync", {"script": source, "args": []})

    def press(self, key: str) -> None:
        self.session_command("POST", "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]})

    def wait_for(self, source: str, expected, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            value = self.script(source)
            if value == expected or time.monotonic() > deadline:
                return value
            time.sleep(0.1)

    def close(self) -> None:
        self.command("DELETE", f"/session/{self.session}")


def _serve(trained_run, start_count: int, usual_shifts=None):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_play.py
    trained = load_trained_model(trained_run["run_folder"])
    starts = [(name, load_start_image(path, trained.config.data))
              for name, path in dataset_start_frames(trained.config.data, start_count)]
    http_server = create_http_server(PlayServer(trained.model, trained.config.data, starts, ServerLimits(),
                                                usual_shifts=usual_shifts), port=0)
    thread = serve_in_thread(http_server)
    yield f"http://127.0.0.1:{http_server.server_address[1]}/"
    http_server.shutdown()
    http_server.server_close()
    thread.join(timeout=5)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def page_url(trained_run):
    yield from _serve(trained_run, 2)


@pytest.fixture(scope="module")
def page_url_without_starts(trained_run):
    """The page of a server that has no start images (the run's dataset is elsewhere and no --image was given)."""
    yield from _serve(trained_run, 0)


@pytest.fixture(scope="module")
def page_url_with_usual_shifts(trained_run):
    """The page of `play.py --serve --usual-shifts`: action 0 comes with a shift right, action 2 with one up."""
    yield from _serve(trained_run, 1, UsualShifts(["0.250,0.000:0", "1", "0.000,-0.167:2"],
                                                  ["code 0, shift +16.0 +0.0 px", "code 1, unused: no shift",
                                                   "code 2, shift +0.0 -8.0 px"], "evaluate-val-one_step.jsonl"))


@pytest.fixture(scope="module")
def browser():
    port = _free_port()
    driver_process = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
                    if json.loads(response.read())["value"]["ready"]:
                        break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("chromedriver did not start within 30 s")
            time.sleep(0.1)
        driver = WebDriver(f"http://127.0.0.1:{port}")
        try:
            yield driver
        finally:
            driver.close()
    finally:
        driver_process.terminate()
        driver_process.wait(timeout=10)


def test_keys_generate_frames(page_url, browser, tmp_path):
    browser.session_command("POST", "/url", {"url": page_url})
    assert browser.wait_for("return document.body.dataset.ready || null", "true") == "true"
    counter = "return document.getElementById('counter').textContent"
    image = "return document.getElementById('frame').src"
    assert browser.script(counter) == "0"
    first_image = browser.script(image)
    assert first_image.startswith("data:image/png;base64,")
    assert "1: action 0" in browser.script("return document.getElementById('action-buttons').textContent")

    browser.press(ARROW_RIGHT)
    assert browser.wait_for(counter, "1") == "1"
    assert browser.script(image) != first_image
    assert browser.script("return document.getElementById('last-shift').textContent") == "right"

    browser.press("3")  # key 3: one step 'stay' with local action 2
    assert browser.wait_for(counter, "2") == "2"
    assert browser.script("return document.getElementById('current-action').textContent") == "2"
    browser.press(ARROW_UP)
    assert browser.wait_for(counter, "3") == "3"
    assert browser.script("return document.getElementById('current-action').textContent") == "2"

    browser.press("0")  # reset
    assert browser.wait_for(counter, "0") == "0"
    assert browser.script(image) == first_image
    message = "return document.getElementById('message').textContent"
    assert browser.script(message) == ""
    assert "1 … 3" in browser.script("return document.getElementById('keys').textContent")  # K = 3 here

    # An upload that is not an image: the server's reason is shown on the page.
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    upload = browser.session_command("POST", "/element", {"using": "css selector", "value": "#upload"})
    element = next(iter(upload.values()))
    browser.session_command("POST", f"/element/{element}/value", {"text": str(notes)})
    shown = browser.wait_for(message + ".startsWith('notes.png: not an image') || null", True)
    assert shown is True, browser.script(message)
    assert browser.script("return document.getElementById('message').className") == "error"


def test_no_image_is_shown_until_there_is_a_frame(page_url_without_starts, browser, trained_run):
    browser.session_command("POST", "/url", {"url": page_url_without_starts})
    assert browser.wait_for("return document.body.dataset.ready || null", "true") == "true"
    displayed = "return getComputedStyle(document.getElementById('{}')).display !== 'none'"
    assert browser.script(displayed.format("frame")) is False, "an <img> without a frame shows as a broken image"
    assert browser.script(displayed.format("no-frame")) is True
    assert browser.script("return document.getElementById('no-frame').textContent").startswith("no image yet")

    # an upload gives the first frame: the image appears and the placeholder goes
    frame = next(iter(sorted((Path(trained_run["dataset_root"]) / "test").glob("*/00000.png"))))
    upload = browser.session_command("POST", "/element", {"using": "css selector", "value": "#upload"})
    browser.session_command("POST", f"/element/{next(iter(upload.values()))}/value", {"text": str(frame)})
    assert browser.wait_for("return document.body.dataset.step || null", "0") == "0"
    assert browser.script(displayed.format("frame")) is True and browser.script(displayed.format("no-frame")) is False
    assert browser.script("return document.getElementById('frame').src").startswith("data:image/png;base64,")


def test_usual_shifts_move_each_action_its_way(page_url_with_usual_shifts, browser):
    """With usual shifts the action buttons carry their labels, and a number key steps its action with its usual
    shift: key 1 moves right by 0.25 with action 0; key 2 (an unused code) stays."""
    browser.session_command("POST", "/url", {"url": page_url_with_usual_shifts})
    assert browser.wait_for("return document.body.dataset.ready || null", "true") == "true"
    buttons = browser.script("return document.getElementById('action-buttons').textContent")
    assert "1: code 0, shift +16.0 +0.0 px" in buttons and "3: code 2, shift +0.0 -8.0 px" in buttons
    assert "with its usual shift" in browser.script("return document.getElementById('keys').textContent")
    counter = "return document.getElementById('counter').textContent"
    last_shift = "return document.getElementById('last-shift').textContent"
    browser.press("1")
    assert browser.wait_for(counter, "1") == "1"
    assert browser.script(last_shift) == "(0.25, 0)"
    assert browser.script("return document.getElementById('current-action').textContent") == "0"
    browser.press("2")
    assert browser.wait_for(counter, "2") == "2"
    assert browser.script(last_shift) == "stay"
    assert browser.script("return document.getElementById('current-action').textContent") == "1"

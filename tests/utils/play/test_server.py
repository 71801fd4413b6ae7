"""The play page's HTTP API (utils/play/server.py) on the tiny trained run, through urllib."""
import html.parser
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from model.trained import load_trained_model
from utils.errors import GlassError
from utils.play.actions import dataset_start_frames, load_start_image
from utils.play.server import (
    PAGE_FILE,
    PlayServer,
    ServerLimits,
    UsualShifts,
    create_http_server,
    key_bindings,
    serve_in_thread,
)

UPLOAD_LIMIT = 100_000  # bytes
MAX_FRAMES = 4
MAX_SESSIONS = 2


@pytest.fixture(scope="module")
def server(trained_run):
    """A server on a free port of 127.0.0.1 with two start images of the run's dataset; shut down afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_play.py: two threads on a shared CPU wait for each other
    trained = load_trained_model(trained_run["run_folder"])
    starts = [(name, load_start_image(path, trained.config.data))
              for name, path in dataset_start_frames(trained.config.data, 2)]
    play_server = PlayServer(trained.model, trained.config.data, starts,
                             ServerLimits(max_sessions=MAX_SESSIONS, max_frames=MAX_FRAMES,
                                          max_upload_bytes=UPLOAD_LIMIT))
    http_server = create_http_server(play_server, port=0)
    thread = serve_in_thread(http_server)
    yield {"url": f"http://127.0.0.1:{http_server.server_address[1]}", "play_server": play_server}
    http_server.shutdown()
    http_server.server_close()
    thread.join(timeout=5)
    torch.set_num_threads(threads)


def request(server, path, payload=None, data=None, headers=None, method=None):
    """(status, headers, body bytes) of one request; JSON `payload` or raw `data`."""
    body = data if data is not None else (json.dumps(payload).encode() if payload is not None else None)
    all_headers = {"Content-Type": "application/json"} if payload is not None else {}
    all_headers.update(headers or {})
    call = urllib.request.Request(server["url"] + path, data=body, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(call, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def api(server, path, payload=None, **kwargs):
    status, _, body = request(server, path, payload, **kwargs)
    return status, json.loads(body)


def png_bytes(width=40, height=30) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_page_and_info(server):
    status, headers, body = request(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="frame"' in body and b"<script src" not in body and b"http" not in body.split(b"<script>")[1]
    status, info = api(server, "/api/info")
    assert status == 200 and info["num_actions"] == 3 and info["frame_size"] == [128, 96]
    assert info["directions"]["right"] == [0.07, 0.0] and len(info["starts"]) == 2
    # without usual shifts each action's button and key is the bare action: one step 'stay'
    assert info["action_steps"] == ["0", "1", "2"] and info["action_labels"] == ["action 0", "action 1", "action 2"]
    assert info["usual_shifts_from"] is None
    status, headers, body = request(server, "/api/start/1.png")
    assert status == 200 and Image.open(io.BytesIO(body)).size == (128, 96)
    assert api(server, "/api/start/7.png")[0] == 404


def test_the_page_has_no_frame_image_until_a_frame_comes():
    # Without Chromium (tests/test_play_page.py checks it in a browser): the <img> is hidden in the page as served,
    # a placeholder says what to do, and show() reveals the image when the first frame arrives.
    class FrameElements(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.found = {}

        def handle_starttag(self, tag, attributes):
            attributes = dict(attributes)
            if attributes.get("id") in ("frame", "no-frame"):
                self.found[attributes["id"]] = (tag, attributes)

    with open(PAGE_FILE, encoding="utf-8") as handle:
        page = handle.read()
    parser = FrameElements()
    parser.feed(page)
    tag, attributes = parser.found["frame"]
    assert tag == "img" and "hidden" in attributes and "src" not in attributes
    assert "no-frame" in parser.found and "no image yet" in page
    show = page.split("function show(state) {")[1].split("\n}")[0]
    assert "frameImage.hidden = false" in show and "noFrame.hidden = true" in show
    assert "[hidden] { display: none !important; }" in page, "#frame's display: block would override `hidden`"


def test_play_steps_reset_and_download(server):
    status, state = api(server, "/api/session", {"start": 0})
    assert status == 200 and state["step"] == 0 and state["image"].startswith("data:image/png;base64,")
    session, first_image = state["session"], state["image"]
    status, state = api(server, "/api/step", {"session": session, "token": "right"})
    assert status == 200 and state["step"] == 1 and state["global_shift"] == [0.07, 0.0] and state["local_action"] == 0
    assert state["image"] != first_image
    status, state = api(server, "/api/step", {"session": session, "token": "2"})
    assert state["step"] == 2 and state["global_shift"] == [0.0, 0.0] and state["local_action"] == 2
    status, state = api(server, "/api/step", {"session": session, "token": "up"})
    assert state["step"] == 3 and state["local_action"] == 2  # an arrow keeps the current action

    status, error = api(server, "/api/step", {"session": session, "token": "7"})
    assert status == 400 and "local action 7 is out of range: this model has 3 actions" in error["error"]
    status, error = api(server, "/api/step", {"session": session, "token": "right*2"})
    assert status == 409 and f"limit of {MAX_FRAMES} frames" in error["error"]

    status, headers, gif = request(server, f"/api/video.gif?session={session}")
    assert status == 200 and headers["Content-Type"] == "image/gif" and "attachment" in headers["Content-Disposition"]
    with Image.open(io.BytesIO(gif)) as picture:
        durations = []
        for index in range(picture.n_frames):
            picture.seek(index)
            durations.append(picture.info["duration"])
    assert ServerLimits().fps == 8 and sum(durations) == 4 * 120  # 4 frames at 8 fps (GIF: 120 ms per frame)

    status, state = api(server, "/api/reset", {"session": session})
    assert status == 200 and state["step"] == 0 and state["image"] == first_image


def test_sessions_are_capped(server):
    first = api(server, "/api/session", {"start": 0})[1]["session"]
    for _ in range(MAX_SESSIONS):
        api(server, "/api/session", {"start": 1})
    assert server["play_server"].session_count == MAX_SESSIONS
    status, error = api(server, "/api/step", {"session": first, "token": "right"})
    assert status == 404 and "unknown or expired session" in error["error"]
    assert api(server, "/api/session", {"start": 5})[0] == 400


def test_uploads(server):
    status, state = api(server, "/api/upload", data=png_bytes(), headers={"Content-Type": "image/png",
                                                                          "X-Filename": "me%20.png"})
    assert status == 200 and state["start"] == "upload: me .png" and state["step"] == 0
    assert api(server, "/api/step", {"session": state["session"], "token": "left"})[1]["step"] == 1

    status, error = api(server, "/api/upload", data=b"just some text", headers={"Content-Type": "image/png",
                                                                                "X-Filename": "notes.png"})
    assert status == 400 and error["error"].startswith("notes.png: not an image")
    status, error = api(server, "/api/upload", data=b"hello", headers={"Content-Type": "text/plain"})
    assert status == 400 and "not an image" in error["error"]
    status, error = api(server, "/api/upload", data=b"\x89PNG" + bytes(UPLOAD_LIMIT),
                        headers={"Content-Type": "image/png"})
    assert status == 413 and error["error"] == ("the upload is too large: 100,004 bytes (0.0954 MB), the limit is "
                                                "100,000 bytes (0.0954 MB; play.py --max-upload-mb)")


def test_other_hosts_and_bad_requests_are_refused(server):
    status, error = api(server, "/api/info", headers={"Host": "evil.example:80"})
    assert status == 403 and "refused" in error["error"]
    status, error = api(server, "/api/step", data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and "not JSON" in error["error"]
    assert api(server, "/api/nothing", {})[0] == 404
    with pytest.raises(GlassError, match=r"listens on 127.0.0.1 only"):
        create_http_server(server["play_server"], port=0, host="0.0.0.0")


def test_usual_shifts_set_each_actions_step_and_are_checked(server):
    """`UsualShifts`: /api/info serves each action's step of the action language and its label, the number keys'
    description says so, and a step with that token moves by the usual shift with that action; steps that are not
    one step of their own action, or a count other than K, are refused when the server is made."""
    served = server["play_server"]
    usual = UsualShifts(["0.120,0.000:0", "1", "0.000,-0.100:2"],
                        ["code 0, shift +7.7 +0.0 px", "code 1, unused: no shift", "code 2, shift +0.0 -4.8 px"],
                        "evaluate-val-one_step.jsonl (val, 2026-01-02T00:00:00Z)")
    with_usual = PlayServer(served.model, served.data_config, served.start_images, served.limits, usual_shifts=usual)
    info = with_usual.info()
    assert info["action_steps"] == list(usual.steps) and info["action_labels"] == list(usual.labels)
    assert info["usual_shifts_from"] == usual.source
    assert info["keys"][2]["does"].startswith("one step of local action 0 … 2 with its usual shift, shown on its "
                                              "button (key k: action k−1)")
    assert key_bindings(3)[2][1].startswith("one step 'stay' with local action 0")
    state = with_usual.new_session(0)
    state = with_usual.step(state["session"], info["action_steps"][2])
    assert state["global_shift"] == [0.0, -0.1] and state["local_action"] == 2
    for steps, labels, match in ((["0", "1"], ["a", "b"], "2 steps and 2 labels for 3 local actions"),
                                 (["0", "2", "1"], ["a", "b", "c"], "'2' is not one step with local action 1"),
                                 (["0", "1", "2*2"], ["a", "b", "c"], "'2\\*2' is not one step with local action 2")):
        with pytest.raises(ValueError, match=match):
            PlayServer(served.model, served.data_config, [], usual_shifts=UsualShifts(steps, labels, "x"))

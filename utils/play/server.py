"""The local web page of `play.py --serve`: play a trained model with the keyboard in a browser.

    server = PlayServer(model, config.data, [("test/sprite_7_video_0", image)], ServerLimits())
    http_server = create_http_server(server, port=8000)     # 127.0.0.1 only
    http_server.serve_forever()

The page (`page.html`, no external scripts or styles) talks to a small JSON API; every
frame is generated here by the model (`model.generation.play_step`), one session per page:

    GET  /                           the page
    GET  /api/info                   the model (frame size, K actions), the start images, the limits, the keys,
                                     each local action's step and label (with `UsualShifts`: its usual shift)
    GET  /api/start/I.png            start image I as the model sees it
    POST /api/session  {"start": I}  a new session from start image I → a state (below)
    POST /api/upload   image bytes   a new session from an uploaded image (Content-Type image/*,
                                     optional X-Filename header) → a state; 413 when larger than
                                     the upload limit, 400 when not an image
    POST /api/step     {"session": S, "token": T}   one token of the action language of utils.play
                                     (e.g. "right", "2", "0.05,0:1") → the new state
    POST /api/reset    {"session": S}                back to the session's start image → a state
    GET  /api/video.gif?session=S    the frames so far as a GIF (a download)

A state is {"session", "start", "step", "frames", "max_frames", "local_action", "global_shift",
"image": a PNG data URL}. Errors are {"error": reason} with status 400 (bad request), 403 (a Host
other than 127.0.0.1 / localhost: the server answers local pages only, which also stops DNS
rebinding), 404 (unknown or expired session), 409 (frame limit reached), 411, 413.

Memory is bounded: at most `max_sessions` sessions (the least recently used one is dropped when
a new one starts) of at most `max_frames` generated frames each, kept as uint8 arrays. The model
runs under one lock (steps of all sessions take turns); everything else runs in the server's
threads, so the page stays responsive while a frame is generated.
"""
from __future__ import annotations

import base64
import io
import json
import os
import secrets
import tempfile
import threading
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import torch
from PIL import Image

from data.video_dataset import prepare_image
from model.generation import NAMED_SHIFTS, PlayState, play_step, start_play
from model.glass import Glass
from utils.config import DataConfig
from utils.errors import GlassError
from utils.media import save_gif, to_uint8_images
from utils.play.actions import parse_token

LOOPBACK_HOST = "127.0.0.1"
_LOCAL_HOST_NAMES = ("127.0.0.1", "localhost")
PAGE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
_DRAIN_LIMIT = 64 * 1024 * 1024  # read (and drop) an over-limit upload up to this size so the client sees the 413

def key_bindings(num_actions: int, usual_shifts: bool = False) -> List[Tuple[str, str]]:
    """What the page's keys do (served in /api/info and shown on the page), for K = `num_actions`; with
    `usual_shifts` the number keys step each local action with its usual shift instead of 'stay'."""
    last_key = min(num_actions, 9)
    actions = f"local action 0 … {last_key - 1}"
    step = (f"one step of {actions} with its usual shift, shown on its button" if usual_shifts
            else f"one step 'stay' with {actions}")
    return [
        ("← → ↑ ↓", "one step with that global shift (left, right, up, down) and the current local action"),
        ("space", "one step 'stay' with the current local action"),
        (f"1 … {last_key}" if last_key > 1 else "1",
         f"{step} (key k: action k−1), "
         "which becomes the current action"
         + (f"; actions 9 … {num_actions - 1} by their buttons" if num_actions > 9 else "")),
        ("0", "reset: back to the start image"),
    ]


@dataclass
class ServerLimits:
    """Bounds on what clients can make the server hold or read."""

    max_sessions: int = 8  # sessions kept; the least recently used is dropped for a new one
    max_frames: int = 300  # generated frames per session (the start image not counted)
    max_upload_bytes: int = 10 * 1024 * 1024  # uploads larger than this are refused with 413
    max_upload_pixels: int = 40_000_000  # decoded size limit of an uploaded image (width × height)
    fps: float = 8.0  # of the downloaded GIF


@dataclass(frozen=True)
class UsualShifts:
    """`play.py --serve --usual-shifts`: each local action's step of the action language with its usual shift
    (`utils.evaluation.action_metrics.usual_shift_tokens`, e.g. "0.120,0.000:3"), its button label, and the
    evaluation record they come from."""
    steps: Sequence[str]
    labels: Sequence[str]
    source: str


class RequestError(Exception):
    """A refused request: its HTTP status and the reason shown on the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Session:
    identifier: str
    start_name: str
    start_image: torch.Tensor  # (3, H, W) on the model's device
    state: PlayState
    frames: List[np.ndarray]  # (H, W, 3) uint8, the start image first
    local_action: int = 0
    global_shift: Tuple[float, float] = (0.0, 0.0)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _png_data_url(frame: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class PlayServer:
    """The sessions and the model behind the page; each public method answers one API call
    (a JSON-ready dict) or raises `RequestError`."""

    def __init__(self, model: Glass, data_config: DataConfig, start_images: Sequence[Tuple[str, torch.Tensor]],
                 limits: Optional[ServerLimits] = None, fit: str = "auto", title: str = "GLASS",
                 usual_shifts: Optional["UsualShifts"] = None):
        self.model = model.eval()
        self.data_config = data_config
        self.limits = limits or ServerLimits()
        self.fit = fit
        self.title = title
        self.device = next(model.parameters()).device
        self.num_actions = model.num_actions
        self.usual_shifts = usual_shifts
        if usual_shifts is not None:
            if len(usual_shifts.steps) != self.num_actions or len(usual_shifts.labels) != self.num_actions:
                raise ValueError(f"usual shifts: {len(usual_shifts.steps)} steps and {len(usual_shifts.labels)} "
                                 f"labels for {self.num_actions} local actions")
            for action, token in enumerate(usual_shifts.steps):
                steps = parse_token(token, self.num_actions, 0)
                if len(steps) != 1 or steps[0].local_action != action:
                    raise ValueError(f"usual shifts: {token!r} is not one step with local action {action}")
        self.start_images = [(name, image.to(self.device)) for name, image in start_images]
        self._sessions: "OrderedDict[str, _Session]" = OrderedDict()
        self._sessions_lock = threading.Lock()
        self._model_lock = threading.Lock()
        with open(PAGE_FILE, "rb") as handle:
            self.page = handle.read()

    # -- API ------------------------------------------------------------------------------
    def info(self) -> Dict[str, Any]:
        height, width = self.model.frame_size
        return {"title": self.title, "frame_size": [width, height], "num_actions": self.num_actions,
                "directions": {name: list(shift) for name, shift in NAMED_SHIFTS.items()},
                "starts": [{"index": index, "name": name} for index, (name, _) in enumerate(self.start_images)],
                "max_frames": self.limits.max_frames, "max_sessions": self.limits.max_sessions,
                "max_upload_mb": self.limits.max_upload_bytes / 2 ** 20,
                # each local action's button and number key: the action language's step, and its label
                "action_steps": (list(self.usual_shifts.steps) if self.usual_shifts
                                 else [str(action) for action in range(self.num_actions)]),
                "action_labels": (list(self.usual_shifts.labels) if self.usual_shifts
                                  else [f"action {action}" for action in range(self.num_actions)]),
                "usual_shifts_from": self.usual_shifts.source if self.usual_shifts else None,
                "keys": [{"key": key, "does": does}
                         for key, does in key_bindings(self.num_actions, self.usual_shifts is not None)]}

    def start_png(self, index: int) -> bytes:
        if not 0 <= index < len(self.start_images):
            raise RequestError(HTTPStatus.NOT_FOUND, f"no start image {index}")
        buffer = io.BytesIO()
        Image.fromarray(to_uint8_images(self.start_images[index][1])).save(buffer, format="PNG")
        return buffer.getvalue()

    def new_session(self, start_index: Any) -> Dict[str, Any]:
        if (not isinstance(start_index, int) or isinstance(start_index, bool)
                or not 0 <= start_index < len(self.start_images)):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"'start' must be a start image index in "
                                                       f"0..{len(self.start_images) - 1}, got {start_index!r}")
        name, image = self.start_images[start_index]
        return self._create(name, image)

    def upload(self, data: bytes, filename: str = "upload") -> Dict[str, Any]:
        """A new session from uploaded image bytes (the size limit is checked by the caller, which
        knows Content-Length before reading)."""
        if len(data) > self.limits.max_upload_bytes:
            raise self.too_large(len(data))
        try:
            picture = Image.open(io.BytesIO(data))
            if picture.width * picture.height > self.limits.max_upload_pixels:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"{filename}: {picture.width}×{picture.height} pixels, more than the "
                                   f"{self.limits.max_upload_pixels:,} allowed")
            picture.load()
        except RequestError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{filename}: not an image (PNG, JPEG, GIF, BMP, WebP, TIFF) "
                                                       f"that can be read ({reason})") from None
        try:
            image = prepare_image(picture, self.data_config, self.fit, name=filename)
        except GlassError as error:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(error)) from None
        return self._create(f"upload: {filename}", image.to(self.device))

    def too_large(self, size: int) -> RequestError:
        limit = self.limits.max_upload_bytes
        return RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"the upload is too large: {size:,} bytes ({size / 2 ** 20:.3g} MB), the limit is "
                            f"{limit:,} bytes ({limit / 2 ** 20:.3g} MB; play.py --max-upload-mb)")

    def step(self, session_id: Any, token: Any) -> Dict[str, Any]:
        session = self._session(session_id)
        if not isinstance(token, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"'token' must be a string, got {token!r}")
        with session.lock:
            try:
                steps = parse_token(token.strip(), self.num_actions, session.local_action)
            except ValueError as error:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"token {token!r}: {error}") from None
            if len(session.frames) - 1 + len(steps) > self.limits.max_frames:
                raise RequestError(HTTPStatus.CONFLICT, f"this session reached its limit of {self.limits.max_frames} "
                                                        f"frames: download the GIF, then press 0 to start again")
            state = session.state
            with self._model_lock:
                for step in steps:
                    state = play_step(self.model, state, step.global_shift, step.local_action)
                    session.frames.append(to_uint8_images(state.frame[0]))
            session.state = state
            session.local_action, session.global_shift = steps[-1].local_action, steps[-1].global_shift
            return self._describe(session)

    def reset(self, session_id: Any) -> Dict[str, Any]:
        session = self._session(session_id)
        with session.lock:
            with self._model_lock:
                session.state = start_play(self.model, session.start_image[None])
            session.frames = [to_uint8_images(session.start_image)]
            session.global_shift = NAMED_SHIFTS["stay"]
            return self._describe(session)

    def gif(self, session_id: Any) -> Tuple[bytes, int]:
        """The session's frames as GIF bytes, and their count."""
        session = self._session(session_id)
        with session.lock:
            frames = list(session.frames)
        with tempfile.TemporaryDirectory() as folder:
            path = save_gif(frames, os.path.join(folder, "video.gif"), self.limits.fps)
            with open(path, "rb") as handle:
                return handle.read(), len(frames)

    # -- sessions -------------------------------------------------------------------------
    def _create(self, name: str, image: torch.Tensor) -> Dict[str, Any]:
        with self._model_lock:
            state = start_play(self.model, image[None])
        session = _Session(identifier=secrets.token_urlsafe(16), start_name=name, start_image=image, state=state,
                           frames=[to_uint8_images(image)])
        with self._sessions_lock:
            while len(self._sessions) >= self.limits.max_sessions:
                self._sessions.popitem(last=False)
            self._sessions[session.identifier] = session
        return self._describe(session)

    def _session(self, session_id: Any) -> _Session:
        with self._sessions_lock:
            session = self._sessions.get(session_id) if isinstance(session_id, str) else None
            if session is None:
                raise RequestError(HTTPStatus.NOT_FOUND, "unknown or expired session (the server keeps "
                                                         f"{self.limits.max_sessions}): choose a start image again")
            self._sessions.move_to_end(session.identifier)
            return session

    @property
    def session_count(self) -> int:
        with self._sessions_lock:
            return len(self._sessions)

    def _describe(self, session: _Session) -> Dict[str, Any]:
        return {"session": session.identifier, "start": session.start_name, "step": len(session.frames) - 1,
                "frames": len(session.frames), "max_frames": self.limits.max_frames,
                "local_action": session.local_action, "global_shift": list(session.global_shift),
                "image": _png_data_url(session.frames[-1])}


# --------------------------------------------------------------------------- HTTP

def _handler_class(server: PlayServer, log_requests: bool) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "GLASS-play"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            if log_requests:
                super().log_message(format, *args)

        # -- responses --------------------------------------------------------------------
        def _send(self, status: int, body: bytes, content_type: str, extra: Sequence[Tuple[str, str]] = (),
                  close: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for key, value in extra:
                self.send_header(key, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: Dict[str, Any], close: bool = False) -> None:
            self._send(status, json.dumps(payload).encode("utf-8"), "application/json; charset=utf-8", close=close)

        def _error(self, error: RequestError, close: bool = False) -> None:
            self._json(int(error.status), {"error": error.message}, close=close)

        def _internal_error(self, error: Exception) -> None:
            traceback.print_exc()
            self._error(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR,
                                     f"internal error: {type(error).__name__}: {error}"), close=True)

        def _host_allowed(self) -> bool:
            host = (self.headers.get("Host") or "").strip().lower()
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            if name in _LOCAL_HOST_NAMES:
                return True
            self._error(RequestError(HTTPStatus.FORBIDDEN, f"refused: Host {host!r}; this server answers "
                                                           f"http://{LOOPBACK_HOST}:PORT/ only"), close=True)
            return False

        # -- requests -------------------------------------------------------------------------
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer(self._get)

        def do_POST(self) -> None:  # noqa: N802
            self._answer(self._post)

        def _answer(self, route: Callable[[], None]) -> None:
            """Check the Host header, then route; a request error is answered, a bug too (and logged)."""
            if not self._host_allowed():
                return
            try:
                route()
            except RequestError as error:
                self._error(error)
            except Exception as error:  # a bug: keep serving, tell the page, log the traceback here
                self._internal_error(error)

        def _get(self) -> None:
            url = urlsplit(self.path)
            if url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, server.page, "text/html; charset=utf-8")
            elif url.path == "/api/info":
                self._json(HTTPStatus.OK, server.info())
            elif url.path.startswith("/api/start/") and url.path.endswith(".png"):
                index_text = url.path[len("/api/start/"):-len(".png")]
                if not index_text.isdigit():
                    raise RequestError(HTTPStatus.NOT_FOUND, f"no start image {index_text!r}")
                self._send(HTTPStatus.OK, server.start_png(int(index_text)), "image/png")
            elif url.path == "/api/video.gif":
                session_id = parse_qs(url.query).get("session", [None])[0]
                body, count = server.gif(session_id)
                self._send(HTTPStatus.OK, body, "image/gif",
                           [("Content-Disposition", f'attachment; filename="glass-play-{count}-frames.gif"')])
            elif url.path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            else:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no page {url.path}")

        def _post(self) -> None:
            path = urlsplit(self.path).path
            length_text = self.headers.get("Content-Length")
            if length_text is None or not length_text.strip().isdigit():
                self._error(RequestError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required"),
                            close=True)
                return
            length = int(length_text)
            if path == "/api/upload":
                if length > server.limits.max_upload_bytes:
                    drained = length <= _DRAIN_LIMIT
                    if drained:
                        self._drain(length)
                    self._error(server.too_large(length), close=not drained)
                    return
                filename = os.path.basename(unquote(self.headers.get("X-Filename", "upload")))[:100] or "upload"
                content_type = self.headers.get("Content-Type", "")
                data = self.rfile.read(length)
                if content_type and not content_type.startswith(("image/", "application/octet-stream")):
                    raise RequestError(HTTPStatus.BAD_REQUEST, f"{filename}: not an image (Content-Type "
                                                               f"{content_type!r}; expected image/*)")
                self._json(HTTPStatus.OK, server.upload(data, filename))
                return
            if length > 64 * 1024:
                self._drain(min(length, _DRAIN_LIMIT))
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                raise RequestError(HTTPStatus.BAD_REQUEST, "the request body is not JSON") from None
            if not isinstance(body, dict):
                raise RequestError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
            if path == "/api/session":
                self._json(HTTPStatus.OK, server.new_session(body.get("start")))
            elif path == "/api/step":
                self._json(HTTPStatus.OK, server.step(body.get("session"), body.get("token")))
            elif path == "/api/reset":
                self._json(HTTPStatus.OK, server.reset(body.get("session")))
            else:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no API {path}")

        def _drain(self, length: int) -> None:
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)

    return Handler


class _LocalHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive
    allow_reuse_address = True


def create_http_server(server: PlayServer, port: int = 8000, host: str = LOOPBACK_HOST,
                       log_requests: bool = False) -> ThreadingHTTPServer:
    """An HTTP server for `server` bound to 127.0.0.1:`port` (0: a free port; the bound one is
    `.server_address[1]`). Any other host is refused: the page is for this machine only."""
    if host != LOOPBACK_HOST:
        raise GlassError(f"host {host!r}: the play server listens on {LOOPBACK_HOST} only (use an SSH tunnel "
                         f"to reach it from another machine)")
    if not 0 <= port <= 65535:
        raise GlassError(f"--port: must be in 0..65535, got {port}")
    try:
        return _LocalHTTPServer((host, port), _handler_class(server, log_requests))
    except OSError as error:
        raise GlassError(f"--port {port}: cannot listen on {host}:{port} ({error.strerror or error})") from None


def serve_in_thread(http_server: ThreadingHTTPServer) -> threading.Thread:
    """Run `http_server.serve_forever` in a daemon thread (stop it with `http_server.shutdown()`)."""
    thread = threading.Thread(target=http_server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return thread


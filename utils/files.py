"""Writing files so that a crash or an interruption never leaves a half-written one: whole files
(`write_atomically`, `write_json_atomically`), whole folders (`write_folder_atomically`, a video's frames),
and appended JSON lines (`append_json_line`, the metrics logs)."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterator, Mapping, Tuple, TypeVar

from utils.errors import GlassError

TEMPORARY_PREFIX = ".tmp-"  # the folders of `write_folder_atomically` until they are complete: leftovers of a crash
_Written = TypeVar("_Written")


def write_atomically(path: str, write: Callable[[str], None]) -> str:
    """Call `write(temporary_path)` for a fresh empty file beside `path`, then move it onto `path`.

    The temporary file is in the same folder (created if needed), so `os.replace` is atomic:
    readers see the old file or the new one, never a part. On any failure the temporary
    file is removed and the error propagates. Returns `path`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def require_folder_can_be_made(folder: str, option: str) -> None:
    """A one-line `GlassError` naming `option` when `folder`, or the nearest folder above it that exists, is a
    file: checked before any work, instead of a traceback from `os.makedirs` once results are ready."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise GlassError(f"{option} {folder}: {existing} is a file, not a folder")


def sha256_of_file(path: str) -> str:
    """The hexadecimal SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomically(path: str, content: Any) -> str:
    """`content` as indented JSON with a final newline, written with `write_atomically`."""
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)
            handle.write("\n")

    return write_atomically(path, write)


def utc_time() -> str:
    """Now as ISO 8601 in UTC to the second, e.g. '2025-01-31T14:05:09Z': the `time` of every JSON line."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def append_json_line(path: str, record: Mapping[str, Any]) -> Dict[str, Any]:
    """Append `record` with its `time` set to now (`utc_time`; a `time` the record has is replaced in place,
    otherwise it comes last) as one line of JSON to `path` (its folder created if needed), in a single write,
    flushed and synced to disk; returns the line as a dict. Readers skip a line cut by a crash."""
    line = {**record, "time": utc_time()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return line


def json_records(path: str, strict: bool = False) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(line number from 1, record) for each line of the JSON-lines file `path` that holds a JSON object, in order
    (blank lines skipped). Any other line — one cut by a crash (`append_json_line`), or a value that is not an
    object — is skipped, or with `strict` stops the reading with a one-line GlassError naming the file and line."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                if strict:
                    raise GlassError(f"{path}: line {number} is not JSON ({error})") from None
                continue
            if isinstance(record, dict):
                yield number, record
            elif strict:
                raise GlassError(f"{path}: line {number} is not a JSON object")


def write_folder_atomically(folder: str, write: Callable[[str], _Written]) -> _Written:
    """Call `write(temporary_folder)` for a fresh empty folder beside `folder`, then move it onto `folder`.

    The temporary folder is named `TEMPORARY_PREFIX` + the folder's name + the process id and a random
    suffix, in the same parent (created if needed; permissions from the umask, as `os.makedirs`), so the
    move is a rename: `folder` appears complete or not at all. An existing `folder` is replaced whole
    (moved aside under a temporary name first, then deleted). On any failure, an interruption included,
    the temporary folder is removed and the error propagates; a hard crash can leave it behind, for the
    writer's next run to delete by its prefix. Returns what `write` returned.
    """
    parent, name = os.path.split(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    while True:
        temporary = os.path.join(parent, f"{TEMPORARY_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(temporary)
            break
        except FileExistsError:
            continue
    try:
        written = write(temporary)
        if os.path.lexists(folder):
            old = temporary + "-old"  # unique as `temporary` is
            os.replace(folder, old)
            os.replace(temporary, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return written

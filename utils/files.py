"""Writing files so that a crash or an interruption never leaves a half-written one."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Callable


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

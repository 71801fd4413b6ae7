"""Atomic writes: readers see the old file or the new one, never a part."""
import json
import os

import pytest

from utils.errors import GlassError
from utils.files import json_records, require_folder_can_be_made, write_atomically, write_json_atomically


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    write_json_atomically(str(path), {"a": 1})

    def failing(temporary):
        with open(temporary, "w") as handle:
            handle.write('{"half": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(str(path), failing)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["report.json"]


def test_writes_create_the_folder_and_replace(tmp_path):
    path = tmp_path / "new" / "x.json"
    assert write_json_atomically(str(path), [1, 2]) == str(path)
    write_json_atomically(str(path), [3])
    assert json.loads(path.read_text()) == [3] and path.read_text().endswith("\n")
    assert os.listdir(path.parent) == ["x.json"]


def test_a_folder_that_cannot_be_made_is_named_before_any_work(tmp_path):
    require_folder_can_be_made(str(tmp_path), "--out")  # exists
    require_folder_can_be_made(str(tmp_path / "new" / "deeper"), "--out")  # can be made
    assert os.listdir(tmp_path) == [], "nothing is created"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for folder in (a_file, a_file / "new" / "deeper"):
        with pytest.raises(GlassError, match=f"^--out {folder}: {a_file} is a file, not a folder$"):
            require_folder_can_be_made(str(folder), "--out")


def test_sha256_of_file_matches_hashlib(tmp_path):
    import hashlib

    from utils.files import sha256_of_file

    path = tmp_path / "blob"
    content = bytes(range(256)) * 5000  # more than one 1 MiB block
    path.write_bytes(content)
    assert sha256_of_file(str(path)) == hashlib.sha256(content).hexdigest()


def test_append_json_line_syncs_one_whole_line_stamped_with_the_utc_time(tmp_path, monkeypatch):
    import re

    from utils.files import append_json_line

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda descriptor: (synced.append(descriptor), real_fsync(descriptor)))
    path = tmp_path / "new" / "metrics.jsonl"  # the folder is created
    first = append_json_line(str(path), {"step": 1, "loss": 0.5})
    second = append_json_line(str(path), {"step": 2, "time": "kept in place, replaced"})
    assert len(synced) == 2
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [first, second]
    assert list(first) == ["step", "loss", "time"] and list(second) == ["step", "time"]
    for record in (first, second):  # ISO 8601, UTC, to the second: one format for every JSON-lines file
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["time"]), record["time"]


def test_write_folder_atomically_replaces_whole_and_an_interrupted_write_leaves_nothing(tmp_path):
    from utils.files import TEMPORARY_PREFIX, write_folder_atomically

    video = tmp_path / "split" / "video_0"  # the parent is created

    def frames(count):
        def write(folder):
            for index in range(count):
                with open(os.path.join(folder, f"{index:05d}.png"), "w") as handle:
                    handle.write(str(index))
            return count
        return write

    assert write_folder_atomically(str(video), frames(3)) == 3
    assert sorted(os.listdir(video)) == ["00000.png", "00001.png", "00002.png"]
    mode = os.stat(video).st_mode & 0o777
    os.mkdir(tmp_path / "made_by_mkdir")
    assert mode == os.stat(tmp_path / "made_by_mkdir").st_mode & 0o777  # the umask's permissions, not mkdtemp's 0700
    write_folder_atomically(str(video), frames(1))  # an existing folder is replaced whole
    assert os.listdir(video) == ["00000.png"]

    def interrupted(folder):
        frames(2)(folder)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_folder_atomically(str(tmp_path / "split" / "video_1"), interrupted)
    with pytest.raises(KeyboardInterrupt):  # the old folder stays as it was
        write_folder_atomically(str(video), interrupted)
    assert sorted(os.listdir(tmp_path / "split")) == ["video_0"]
    assert os.listdir(video) == ["00000.png"]
    assert not any(name.startswith(TEMPORARY_PREFIX) for name in os.listdir(tmp_path / "split"))


def test_json_records_skip_or_name_what_is_not_an_object(tmp_path):
    """`json_records`: the objects with their line numbers, blank lines passed over; a line cut by a crash and a
    value that is not an object are skipped, or with strict=True a one-line error names the file and line."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n\n[1, 2]\n{"step": 2}\n{"step": 3, "cut', encoding="utf-8")
    assert list(json_records(str(path))) == [(1, {"step": 1}), (4, {"step": 2})]
    with pytest.raises(GlassError, match=r"log\.jsonl: line 3 is not a JSON object"):
        list(json_records(str(path), strict=True))
    path.write_text('{"step": 1}\n{"step": 3, "cut', encoding="utf-8")
    with pytest.raises(GlassError, match=r"log\.jsonl: line 2 is not JSON"):
        list(json_records(str(path), strict=True))

"""Atomic writes: readers see the old file or the new one, never a part."""
import json
import os

import pytest

from utils.files import write_atomically, write_json_atomically


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


def test_sha256_of_file_matches_hashlib(tmp_path):
    import hashlib

    from utils.files import sha256_of_file

    path = tmp_path / "blob"
    content = bytes(range(256)) * 5000  # more than one 1 MiB block
    path.write_bytes(content)
    assert sha256_of_file(str(path)) == hashlib.sha256(content).hexdigest()

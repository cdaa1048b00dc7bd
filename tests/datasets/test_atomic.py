import pytest

from datasets.atomic import atomic_path, atomic_write_json


def test_success_replaces_and_leaves_no_temp(tmp_path):
    p = atomic_write_json(tmp_path / "sub" / "a.json", {"x": 1})
    assert p.read_text() == '{\n "x": 1\n}'
    assert [q.name for q in p.parent.iterdir()] == ["a.json"]


def test_failure_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["a.txt"]

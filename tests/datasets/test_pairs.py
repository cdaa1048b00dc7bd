import pytest

from datasets.errors import EditorError
from datasets.pairs import find_pairs


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_folder_layout_any_extension(tmp_path, caplog):
    _touch(tmp_path / "raw" / "jam1.wav")
    _touch(tmp_path / "edited" / "jam1.mp3")
    _touch(tmp_path / "raw" / "jam2.flac")
    _touch(tmp_path / "edited" / "jam2.flac")
    _touch(tmp_path / "raw" / "lonely.wav")
    _touch(tmp_path / "raw" / "notes.txt")
    pairs = find_pairs(tmp_path)
    assert [(p.name, p.raw.name, p.edited.name) for p in pairs] == [
        ("jam1", "jam1.wav", "jam1.mp3"),
        ("jam2", "jam2.flac", "jam2.flac"),
    ]
    assert "lonely.wav" in caplog.text


def test_side_by_side_layout(tmp_path):
    _touch(tmp_path / "take_raw.wav")
    _touch(tmp_path / "take_edit.ogg")
    _touch(tmp_path / "other_raw.wav")
    _touch(tmp_path / "other_edited.wav")
    pairs = find_pairs(tmp_path)
    assert [(p.name, p.edited.name) for p in pairs] == [("other", "other_edited.wav"), ("take", "take_edit.ogg")]


def test_no_pairs_is_an_error(tmp_path):
    _touch(tmp_path / "raw" / "a.wav")
    with pytest.raises(EditorError, match="no raw/edited pairs"):
        find_pairs(tmp_path)
    with pytest.raises(EditorError, match="not found"):
        find_pairs(tmp_path / "missing")


def test_projects_are_edited_sides(tmp_path, caplog):
    """A DAW project pairs like audio; beside an audio edit of the same name it wins."""
    _touch(tmp_path / "raw" / "a.wav")
    _touch(tmp_path / "edited" / "a.rpp")
    _touch(tmp_path / "raw" / "b.flac")
    _touch(tmp_path / "edited" / "b.wav")
    _touch(tmp_path / "edited" / "b.plan.json")
    _touch(tmp_path / "raw" / "c.wav")
    _touch(tmp_path / "edited" / "c.otio")
    _touch(tmp_path / "d_raw.wav")
    _touch(tmp_path / "d_edit.rpp")
    pairs = find_pairs(tmp_path)
    assert [(p.name, p.edited.name) for p in pairs] == [
        ("a", "a.rpp"), ("b", "b.plan.json"), ("c", "c.otio"), ("d", "d_edit.rpp"),
    ]
    assert "using the project b.plan.json, ignoring b.wav" in caplog.text
    _touch(tmp_path / "edited" / "a.otio")
    with pytest.raises(EditorError, match="two files named 'a'"):
        find_pairs(tmp_path)

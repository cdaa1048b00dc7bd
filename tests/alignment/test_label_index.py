"""alignment.label_index: the one reader of make align's labels folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignment.label_index import keep_ratios, label_file, read_index, read_label_records
from datasets.errors import ParameterError


def _write(run, index, records):
    (run / "labels").mkdir(parents=True)
    (run / "labels" / "index.json").write_text(json.dumps(index))
    for name, rec in records.items():
        (run / "labels" / f"{name}.json").write_text(json.dumps(rec))


def test_reads_index_and_records_by_name(tmp_path):
    moved = str(tmp_path / "elsewhere" / "b.json")  # a run folder that was moved: label path is stale
    _write(tmp_path, {"b": {"label": moved, "keep_ratio": 0.3}, "a": {"keep_ratio": 0.5}},
           {"a": {"plan": {"keep_ratio": 0.5}}, "b": {"plan": {"keep_ratio": 0.3}}})
    assert list(read_index(tmp_path)) == ["a", "b"]
    assert label_file(tmp_path, "b", {"label": moved}) == tmp_path / "labels" / "b.json"
    assert [n for n, _, _ in read_label_records(tmp_path)] == ["a", "b"]
    np.testing.assert_allclose(keep_ratios(tmp_path), [0.5, 0.3])


def test_keep_ratio_from_the_record_when_the_entry_lacks_it(tmp_path):
    _write(tmp_path, {"a": {}}, {"a": {"plan": {"keep_ratio": 0.42}}})
    np.testing.assert_allclose(keep_ratios(tmp_path), [0.42])
    assert keep_ratios(tmp_path / "no_such_run").size == 0


@pytest.mark.parametrize("content, problem", [(None, "no label index"), ("{", "not valid JSON"),
                                              ("{}", "lists no labelled pair"), ("[1]", "lists no labelled pair")])
def test_bad_index_is_one_line_naming_the_file(tmp_path, content, problem):
    (tmp_path / "labels").mkdir()
    if content is not None:
        (tmp_path / "labels" / "index.json").write_text(content)
    with pytest.raises(ParameterError, match=problem) as exc:
        read_index(tmp_path)
    assert "index.json" in str(exc.value) and "\n" not in str(exc.value)


def test_unreadable_record_names_the_file(tmp_path):
    _write(tmp_path, {"a": {}}, {})
    (tmp_path / "labels" / "a.json").write_text("{not json")
    with pytest.raises(ParameterError, match="a.json: unreadable label record"):
        list(read_label_records(tmp_path))

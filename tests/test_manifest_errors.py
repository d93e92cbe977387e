"""Malformed manifests: each bad line is a RecordError naming the file, the line and the fix; a feature
build skips that product, builds the rest and lists the bad line in its summary."""
import json

import pytest

from core.errors import RecordError
from core.data.records import read_manifest, scan_manifest


def jsonl(*records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def test_latin1_line_names_its_line(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_bytes(jsonl({"id": "a", "title": "Mug"}, '{"id": "b", "title": "Caf\xe9 cup"}'.encode("latin-1"),
                        {"id": "c", "title": "Plate"}))
    with pytest.raises(RecordError, match=r"m\.jsonl:2: not UTF-8 \(byte 0xe9.*Fix: re-save the manifest as UTF-8"):
        read_manifest(m)
    report = scan_manifest(m)
    assert [p.id for p in report.products] == ["a", "c"]
    assert [(q.line, q.where) for q in report.problems] == [(2, f"{m}:2")]


def test_latin1_csv_row_names_its_line(tmp_path):
    m = tmp_path / "m.csv"
    m.write_bytes(b"id,title\np1,Mug\np2,Caf\xe9 cup\np3,Plate\n")
    with pytest.raises(RecordError, match=r"m\.csv:3: column 'title' is not UTF-8"):
        read_manifest(m)
    assert [p.id for p in scan_manifest(m).products] == ["p1", "p3"]


@pytest.mark.parametrize("field, value, match", [
    ("images", 5, r"'images' must be a list of file paths.*got int 5.*Fix"),
    ("images", [1, 2], r"'images' must be a list of file paths"),
    ("title", {"en": "Mug"}, r"'title' must be a text, got dict.*Fix"),
    ("video", ["a.mp4"], r"'video' must be a text, got list"),
    ("attributes", {"size": {"w": 1}}, r"attribute 'size' must be a text.*nested dict.*Fix"),
])
def test_wrong_types_name_field_and_line(tmp_path, field, value, match):
    m = tmp_path / "m.jsonl"
    m.write_bytes(jsonl({"id": "ok", "title": "Mug"}, {"id": "bad", "title": "Cup", field: value}))
    with pytest.raises(RecordError, match=r"m\.jsonl:2: " + match):
        read_manifest(m)
    report = scan_manifest(m)
    assert [p.id for p in report.products] == ["ok"] and report.problems[0].product_id == "bad"


def test_deep_nesting_json_file(tmp_path):
    m = tmp_path / "m.json"
    m.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RecordError, match=r"m\.json: JSON nested deeper than the reader's limit of \d+ levels "
                                          r"\(from line 1\).*Fix"):
        read_manifest(m)


def test_deep_nesting_jsonl_line_skips_only_that_line(tmp_path):
    m = tmp_path / "m.jsonl"
    deep = b'{"id": "deep", "attributes": {"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
    m.write_bytes(jsonl({"id": "a", "title": "Mug"}, deep))
    with pytest.raises(RecordError, match=r"m\.jsonl:2: JSON nested deeper"):
        read_manifest(m)
    assert [p.id for p in scan_manifest(m).products] == ["a"]


def test_moderate_nesting_is_a_type_error_not_a_repr(tmp_path):
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"products": [{"id": "x", "title": "Mug", "attributes": {"k": [[["v"]]]}}]}))
    with pytest.raises(RecordError, match=r"m\.json\[0\]: attribute 'k'"):
        read_manifest(m)


def test_csv_field_over_the_limit(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("id,title,description\np1,Mug,short\np2,Cup," + "x" * 200_000 + "\np3,Plate,fine\n")
    with pytest.raises(RecordError, match=r"m\.csv:3: .*longer than the CSV limit of 131072 characters.*Fix"):
        read_manifest(m)
    report = scan_manifest(m)
    assert [p.id for p in report.products] == ["p1", "p3"] and report.problems[0].line == 3


def test_duplicates_and_empty_products_are_listed(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_bytes(jsonl({"id": "a", "title": "Mug"}, {"id": "a", "title": "Again"}, {"id": "e"}, {"title": "no id"}))
    report = scan_manifest(m)
    assert [p.title for p in report.products] == ["Mug"]
    assert [q.line for q in report.problems] == [2, 3, 4]
    assert "duplicate product id 'a'" in report.problems[0].message
    assert "no usable modality" in report.problems[1].message and "missing 'id'" in report.problems[2].message


def test_build_skips_the_bad_line_and_lists_it(tmp_path, capsys, monkeypatch, featurizer):
    from core.data import featurize
    from core.data.features import FeatureCache, main

    monkeypatch.setattr(featurize, "Featurizer", lambda *a, **k: featurizer)  # the session's backbones

    m = tmp_path / "m.jsonl"
    m.write_bytes(jsonl({"id": "a", "title": "Red mug", "attributes": {"color": "red"}},
                        {"id": "b", "title": "Blue cup", "images": 5},
                        {"id": "c", "title": "Green plate"}))
    out = tmp_path / "cache"
    summary = tmp_path / "summary.json"
    assert main(["build", "--manifest", str(m), "--out", str(out), "--device", "cpu", "--json", str(summary)]) == 0
    printed = capsys.readouterr().out
    assert "1 manifest lines were skipped" in printed and f"{m}:2: 'images'" in printed
    s = json.loads(summary.read_text())
    assert s["products"] == 2 and [q["line"] for q in s["manifest_problems"]] == [2]
    assert s["manifest_problems"][0]["id"] == "b"
    cache = FeatureCache(out)
    assert sorted(cache.keys()) == ["a", "c"] and cache.present("a")[:2] == [True, True]

import json

import pytest

from core.errors import RecordError
from core.data.records import parse_property_string, read_manifest


def test_jsonl_paths_relative_to_manifest(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "title": "Shirt", "images": ["images/a.jpg"],
                                                  "video": None, "attributes": {"color": ["Red", "Blue"]}}) + "\n")
    [p] = read_manifest(tmp_path / "m.jsonl")
    assert p.images == [str(tmp_path / "images/a.jpg")] and p.video is None
    assert p.attributes == {"color": ["Red", "Blue"]}


def test_flat_csv(tmp_path):
    (tmp_path / "m.csv").write_text("id,title,category,images,color,size\n"
                                    "p1,Blue Shirt,Tops,a.jpg;b.jpg,Blue,M\n")
    [p] = read_manifest(tmp_path / "m.csv")
    assert p.images == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert p.attributes == {"color": "Blue", "size": "M"} and p.category == "Tops"


def test_m5product_property_strings(tmp_path):
    assert parse_property_string("brand:Acme;color:red;color:blue;bad") == {"brand": "Acme", "color": ["red", "blue"]}
    (tmp_path / "m5.csv").write_text("id,title,property\nx,Phone case,brand:Acme;material:TPU\n")
    [p] = read_manifest(tmp_path / "m5.csv")
    assert p.attributes == {"brand": "Acme", "material": "TPU"}


def test_product_without_modality_rejected_by_name(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "empty-1", "title": "", "images": []}) + "\n")
    with pytest.raises(RecordError, match="empty-1"):
        read_manifest(tmp_path / "m.jsonl")


def test_shop3k_manifest_reads(shop3k_manifest):
    products = read_manifest(shop3k_manifest)
    assert len(products) > 2000
    assert all(p.category for p in products)
    assert sum(1 for p in products if p.video) > 500

"""Importers of shop-platform exports (Shopify, WooCommerce, Magento 2, Google Merchant Center) on small
exports written from each platform's documented columns, with generated images under --media-root."""
import csv
import http.server
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.errors import RecordError
from core.data.importers import html_to_text, import_export
from core.data.records import read_manifest
from core.data.synth import COLORS, draw_shape, write_image

ROOT = Path(__file__).resolve().parents[1]
DEAD_URL = "http://127.0.0.1:9/cdn/unreachable.jpg"  # nothing listens on the discard port: refused at once


def write_csv(path: Path, header: list[str], rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header, delimiter=delimiter)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


@pytest.fixture()
def media(tmp_path) -> Path:
    """A folder of tiny generated images, found by file name."""
    root = tmp_path / "media"
    (root / "nested").mkdir(parents=True)
    for i, (name, color) in enumerate([("tee-front.png", "red"), ("tee-back.png", "blue"), ("mug.png", "green"),
                                       ("hoodie.png", "red"), ("hoodie-red.png", "red"), ("cap.png", "blue")]):
        write_image(root / name, draw_shape("circle", COLORS[color], size=48, seed=i))
    write_image(root / "nested" / "deep.png", draw_shape("square", COLORS["green"], size=48, seed=9))
    return root


def manifest_rows(path: Path) -> dict[str, dict]:
    return {d["id"]: d for d in map(json.loads, path.read_text().splitlines())}


def names(paths: list[str]) -> list[str]:
    return [Path(p).name for p in paths]


# ----------------------------------------------------------------------------------------- shopify
SHOPIFY_HEADER = ["Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags", "Published",
                  "Option1 Name", "Option1 Value", "Option2 Name", "Option2 Value", "Option3 Name", "Option3 Value",
                  "Variant SKU", "Variant Grams", "Variant Price", "Image Src", "Image Position", "Image Alt Text",
                  "Variant Image", "Status"]


def shopify_export(folder: Path) -> Path:
    cdn = "https://cdn.shopify.com/s/files/1/products"
    rows = [
        {"Handle": "classic-tee", "Title": "Classic Tee &amp; More",
         "Body (HTML)": "<p>Soft <b>cotton</b> tee &ndash; pre-shrunk.</p><ul><li>Crew neck</li><li><p>Machine wash</p></li></ul>",
         "Vendor": "Acme", "Product Category": "Apparel & Accessories > Clothing > Shirts & Tops", "Type": "Shirts",
         "Tags": "summer, cotton,basics", "Published": "TRUE", "Option1 Name": "Color", "Option1 Value": "Red",
         "Option2 Name": "Size", "Option2 Value": "S", "Variant SKU": "TEE-R-S", "Variant Price": "19.00",
         "Image Src": f"{cdn}/tee-back.png?v=17", "Image Position": "2", "Status": "active"},
        {"Handle": "classic-tee", "Option1 Value": "Red", "Option2 Value": "M", "Variant SKU": "TEE-R-M",
         "Variant Price": "19.00", "Image Src": f"{cdn}/tee-front.png?v=17", "Image Position": "1"},
        {"Handle": "classic-tee", "Option1 Value": "Blue", "Option2 Value": "M", "Variant SKU": "TEE-B-M",
         "Variant Price": "21.00"},
        {"Handle": "classic-tee", "Image Src": DEAD_URL, "Image Position": "3"},  # image-only row, unreachable
        {"Handle": "stoneware-mug", "Title": "Stoneware Mug", "Body (HTML)": "Holds 350 ml.", "Vendor": "Kiln Co",
         "Type": "Mugs", "Tags": "kitchen", "Option1 Name": "Title", "Option1 Value": "Default Title",
         "Variant SKU": "MUG-1", "Variant Price": "12.50", "Image Src": f"{cdn}/mug.png", "Image Position": "1"},
        {"Handle": "", "Title": "Orphan row", "Variant SKU": "X-1"},  # a bad row: no Handle
    ]
    return write_csv(folder / "products_export.csv", SHOPIFY_HEADER, rows)


def test_shopify_handles_variants_html_and_image_positions(tmp_path, media):
    out = tmp_path / "out" / "manifest.jsonl"
    r = import_export(shopify_export(tmp_path), "shopify", out, media_root=media, timeout=2)
    assert (r.rows, r.products, r.folded_rows) == (6, 2, 3)
    rows = manifest_rows(out)
    tee = rows["classic-tee"]
    assert tee["title"] == "Classic Tee & More" and tee["source"] == "shopify"
    assert tee["description"] == "Soft cotton tee – pre-shrunk.\n- Crew neck\n- Machine wash"
    assert tee["category"] == "Apparel & Accessories/Clothing/Shirts & Tops"
    assert tee["attributes"] == {"vendor": "Acme", "tags": ["summer", "cotton", "basics"], "color": ["Red", "Blue"],
                                 "size": ["S", "M"], "sku": ["TEE-R-S", "TEE-R-M", "TEE-B-M"], "price": ["19.00", "21.00"]}
    assert names(tee["images"]) == ["tee-front.png", "tee-back.png"]  # ordered by Image Position, not by row
    mug = rows["stoneware-mug"]
    assert mug["category"] == "Mugs" and "color" not in mug["attributes"] and "title" not in mug["attributes"]
    assert mug["attributes"]["price"] == "12.50" and names(mug["images"]) == ["mug.png"]
    assert [m[:2] for m in r.misses] == [("classic-tee", DEAD_URL)] and "fetch failed" in r.misses[0][2]
    assert len(r.skipped) == 1 and r.skipped[0][0].endswith("products_export.csv:7") and "Handle" in r.skipped[0][1]
    assert DEAD_URL in (out.parent / "manifest.jsonl.misses.txt").read_text()
    assert ":7\t" in (out.parent / "manifest.jsonl.skipped.txt").read_text()
    products = read_manifest(out)
    assert [p.id for p in products] == ["classic-tee", "stoneware-mug"] and all(Path(i).is_file() for i in products[0].images)


def test_shopify_2024_column_names(tmp_path, media):
    header = ["URL handle", "Title", "Description", "Vendor", "Product category", "Type", "Tags", "Option1 name",
              "Option1 value", "SKU", "Price", "Product image URL", "Image position"]
    rows = [{"URL handle": "cap", "Title": "Cap", "Description": "<p>A cap.</p>", "Product category": "Hats",
             "Option1 name": "Color", "Option1 value": "Blue", "SKU": "CAP-B", "Price": "9.00",
             "Product image URL": "https://cdn.example.com/img/cap.png", "Image position": "1"},
            {"URL handle": "cap", "Option1 value": "Black", "SKU": "CAP-K", "Price": "9.00"}]
    out = tmp_path / "m.jsonl"
    import_export(write_csv(tmp_path / "new.csv", header, rows), "shopify", out, media_root=media, fetch=False)
    cap = manifest_rows(out)["cap"]
    assert cap["attributes"] == {"color": ["Blue", "Black"], "sku": ["CAP-B", "CAP-K"], "price": "9.00"}
    assert cap["description"] == "A cap." and cap["category"] == "Hats" and names(cap["images"]) == ["cap.png"]


# ------------------------------------------------------------------------------------- woocommerce
WOO_HEADER = ["ID", "Type", "SKU", "Name", "Published", "Short description", "Description", "Categories", "Tags",
              "Images", "Parent", "Regular price", "Attribute 1 name", "Attribute 1 value(s)", "Attribute 1 visible",
              "Attribute 2 name", "Attribute 2 value(s)"]


def test_woocommerce_variations_fold_into_parent(tmp_path, media):
    (tmp_path / "uploads").mkdir()
    write_image(tmp_path / "uploads" / "local.png", draw_shape("triangle", COLORS["red"], size=48))
    rows = [
        {"ID": "40", "Type": "variable", "SKU": "woo-hoodie", "Name": "Hoodie", "Published": "1",
         "Short description": "<p>Warm.</p>", "Description": "<p>Fleece&nbsp;lined<br>Kangaroo pocket</p>",
         "Categories": "Clothing > Hoodies, Clothing", "Tags": "winter, fleece",
         "Images": "https://shop.example.com/wp-content/uploads/hoodie.png, uploads/local.png",
         "Attribute 1 name": "Color", "Attribute 1 value(s)": "Red, Blue", "Attribute 1 visible": "1",
         "Attribute 2 name": "Material", "Attribute 2 value(s)": "Cotton\\, recycled"},
        {"ID": "41", "Type": "variation", "SKU": "woo-hoodie-red", "Name": "Hoodie - Red", "Parent": "id:40",
         "Regular price": "45", "Images": "https://shop.example.com/wp-content/uploads/hoodie-red.png",
         "Attribute 1 name": "Color", "Attribute 1 value(s)": "Red"},
        {"ID": "42", "Type": "variation", "SKU": "woo-hoodie-blue", "Name": "Hoodie - Blue", "Parent": "woo-hoodie",
         "Regular price": "47", "Attribute 1 name": "Color", "Attribute 1 value(s)": "Blue"},
        {"ID": "43", "Type": "variation", "SKU": "lost", "Name": "Lost", "Parent": "id:999", "Regular price": "1"},
        {"ID": "50", "Type": "simple", "SKU": "woo-cap", "Name": "Cap", "Categories": "Accessories",
         "Regular price": "9.99", "Images": "https://shop.example.com/wp-content/uploads/missing-cap.png"},
    ]
    out = tmp_path / "m.jsonl"
    r = import_export(write_csv(tmp_path / "wc-product-export.csv", WOO_HEADER, rows), "woocommerce", out,
                      media_root=media, fetch=False)
    assert (r.products, r.folded_rows) == (2, 2)
    hoodie = manifest_rows(out)["40"]
    assert hoodie["title"] == "Hoodie" and hoodie["category"] == "Clothing/Hoodies"
    assert hoodie["description"] == "Warm.\nFleece lined\nKangaroo pocket"
    assert hoodie["attributes"] == {"tags": ["winter", "fleece"], "color": ["Red", "Blue"], "material": "Cotton, recycled",
                                    "sku": ["woo-hoodie", "woo-hoodie-red", "woo-hoodie-blue"], "price": ["45", "47"]}
    assert names(hoodie["images"]) == ["hoodie.png", "local.png", "hoodie-red.png"]  # a relative path: the export's folder
    assert r.media == {"local": 1, "media_root": 2, "fetched": 0, "cached": 0}
    cap = manifest_rows(out)["50"]
    assert cap["images"] == [] and cap["attributes"] == {"sku": "woo-cap", "price": "9.99"}
    assert [(p, ref.rsplit("/", 1)[1]) for p, ref, _ in r.misses] == [("50", "missing-cap.png")]
    assert "fetching is off" in r.misses[0][2] and str(media) in r.misses[0][2]
    assert len(r.skipped) == 1 and ":5" in r.skipped[0][0] and "'id:999'" in r.skipped[0][1]


# ------------------------------------------------------------------------------------------ magento
MAGENTO_HEADER = ["sku", "store_view_code", "attribute_set_code", "product_type", "categories", "name", "description",
                  "short_description", "price", "base_image", "additional_images", "additional_attributes",
                  "visibility", "configurable_variations"]


def test_magento_configurable_children_and_additional_attributes(tmp_path, media):
    rows = [
        {"sku": "MH01", "product_type": "configurable", "attribute_set_code": "Top",
         "categories": "Default Category/Men/Tops/Hoodies & Sweatshirts,Default Category/Collections",
         "name": "Chaz Hoodie", "description": "<p>Ideal for cold-weather training.</p><ul><li>Fleece</li></ul>",
         "price": "52", "base_image": "/h/o/hoodie.png", "additional_images": "/t/e/tee-back.png,/n/o/nope.png",
         "additional_attributes": "climate=Cool|Indoor,material=Cotton, Polyester,eco_collection=No",
         "visibility": "Catalog, Search",
         "configurable_variations": "sku=MH01-S-Red,size=S,color=Red|sku=MH01-M-Blue,size=M,color=Blue"},
        {"sku": "MH01", "store_view_code": "fr", "name": "Sweat Chaz"},  # a store-view row: ignored
        {"sku": "MH01-S-Red", "product_type": "simple", "name": "Chaz Hoodie-S-Red", "price": "52",
         "base_image": "/h/o/hoodie-red.png", "visibility": "Not Visible Individually"},
        {"sku": "MH01-M-Blue", "product_type": "simple", "name": "Chaz Hoodie-M-Blue", "price": "54",
         "visibility": "Not Visible Individually"},
        {"sku": "24-MB01", "product_type": "simple", "categories": "Default Category/Gear/Bags", "name": "Joust Bag",
         "price": "34", "base_image": "deep.png", "additional_attributes": "activity=Yoga|Gym"},
    ]
    out = tmp_path / "m.jsonl"
    r = import_export(write_csv(tmp_path / "catalog_product.csv", MAGENTO_HEADER, rows), "magento", out,
                      media_root=media, fetch=False)
    assert (r.products, r.folded_rows, r.ignored_rows) == (2, 2, 1)
    m = manifest_rows(out)
    hoodie = m["MH01"]
    assert hoodie["category"] == "Men/Tops/Hoodies & Sweatshirts" and hoodie["title"] == "Chaz Hoodie"
    assert hoodie["description"] == "Ideal for cold-weather training.\n- Fleece"
    assert hoodie["attributes"] == {"climate": ["Cool", "Indoor"], "material": "Cotton, Polyester", "eco_collection": "No",
                                    "sku": ["MH01", "MH01-S-Red", "MH01-M-Blue"], "price": ["52", "54"],
                                    "size": ["S", "M"], "color": ["Red", "Blue"]}
    assert names(hoodie["images"]) == ["hoodie.png", "tee-back.png", "hoodie-red.png"]
    assert [ref for _, ref, _ in r.misses] == ["/n/o/nope.png"]
    bag = m["24-MB01"]
    assert bag["category"] == "Gear/Bags" and bag["attributes"]["activity"] == ["Yoga", "Gym"]
    assert names(bag["images"]) == ["deep.png"]  # found in a subfolder of --media-root


# ---------------------------------------------------------------------------------- google merchant
def test_google_merchant_tsv_groups_items(tmp_path, media):
    header = ["id", "title", "description", "link", "image_link", "additional_image_link", "price", "brand",
              "color", "size", "material", "gender", "item_group_id", "product_type", "google_product_category"]
    img = "https://img.example.com/p"
    rows = [
        {"id": "TEE-R-S", "title": "Tee", "description": "Plain tee.\nTwo lines.", "image_link": f"{img}/tee-front.png",
         "additional_image_link": f"{img}/tee-back.png,{img}/mug.png", "price": "19.00 USD", "brand": "Acme",
         "color": "Red", "size": "S", "material": "Cotton", "gender": "unisex", "item_group_id": "TEE",
         "product_type": "Apparel > Tops > T-Shirts", "google_product_category": "212"},
        {"id": "TEE-B-M", "title": "Tee", "image_link": f"{img}/hoodie.png", "price": "19.00 USD", "color": "Blue",
         "size": "M", "item_group_id": "TEE"},
        {"id": "CAP-1", "title": "Cap", "image_link": f"{img}/cap.png", "google_product_category": "Apparel & Accessories > Hats"},
    ]
    out = tmp_path / "m.jsonl"
    r = import_export(write_csv(tmp_path / "feed.tsv", header, rows, delimiter="\t"), "google-merchant", out,
                      media_root=media, fetch=False)
    assert (r.products, r.folded_rows) == (2, 1)
    m = manifest_rows(out)
    tee = m["TEE"]
    assert tee["category"] == "Apparel/Tops/T-Shirts" and tee["description"] == "Plain tee.\nTwo lines."
    assert tee["attributes"] == {"brand": "Acme", "color": ["Red", "Blue"], "size": ["S", "M"], "material": "Cotton",
                                 "gender": "unisex", "price": "19.00 USD", "sku": ["TEE-R-S", "TEE-B-M"]}
    assert names(tee["images"]) == ["tee-front.png", "hoodie.png", "tee-back.png", "mug.png"]
    assert m["CAP-1"]["category"] == "Apparel & Accessories/Hats"


def test_google_merchant_rss_xml(tmp_path, media):
    xml = """<?xml version="1.0" encoding="ISO-8859-1"?>
<rss xmlns:g="http://base.google.com/ns/1.0" version="2.0"><channel><title>Store</title>
<item><g:id>MUG-1</g:id><title>Stoneware Mug</title>
 <g:description>&lt;p&gt;Holds 350&amp;nbsp;ml.&lt;/p&gt;</g:description>
 <g:image_link>https://img.example.com/mug.png</g:image_link>
 <g:additional_image_link>https://img.example.com/cap.png</g:additional_image_link>
 <g:additional_image_link>https://img.example.com/gone.png</g:additional_image_link>
 <g:product_type>Home &amp; Garden &gt; Kitchen</g:product_type><g:brand>Kiln Co</g:brand><g:price>12.50 EUR</g:price>
</item>
<item><g:id>TEE-R</g:id><g:title>Tee red</g:title><g:item_group_id>TEE</g:item_group_id><g:color>Red</g:color>
 <g:image_link>https://img.example.com/tee-front.png</g:image_link></item>
<item><g:id>TEE-B</g:id><g:title>Tee blue</g:title><g:item_group_id>TEE</g:item_group_id><g:color>Blue</g:color></item>
<item><g:title>No id here</g:title></item>
</channel></rss>"""
    (tmp_path / "feed.xml").write_text(xml, encoding="utf-8")
    out = tmp_path / "m.jsonl"
    r = import_export(tmp_path / "feed.xml", "google-merchant", out, media_root=media, fetch=False)
    m = manifest_rows(out)
    mug = m["MUG-1"]
    assert mug["title"] == "Stoneware Mug" and mug["description"] == "Holds 350 ml."
    assert mug["category"] == "Home & Garden/Kitchen" and mug["attributes"] == {"brand": "Kiln Co", "price": "12.50 EUR"}
    assert names(mug["images"]) == ["mug.png", "cap.png"]
    assert m["TEE"]["title"] == "Tee red" and m["TEE"]["attributes"]["color"] == ["Red", "Blue"]
    assert [ref for _, ref, _ in r.misses] == ["https://img.example.com/gone.png"]
    assert r.skipped == [(f"{tmp_path / 'feed.xml'}: item 4", r.skipped[0][1])] and "no id" in r.skipped[0][1]


def test_google_merchant_atom_and_utf16_tsv(tmp_path, media):
    atom = """<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom" xmlns:g="http://base.google.com/ns/1.0">
<title>Store</title><entry><g:id>CAP-9</g:id><title>Caf\u00e9 Cap</title><g:google_product_category>Apparel &amp; Accessories &gt; Hats</g:google_product_category>
<g:image_link>https://img.example.com/cap.png</g:image_link><g:color>Blue</g:color></entry></feed>"""
    (tmp_path / "feed.atom").write_text(atom, encoding="utf-8")
    import_export(tmp_path / "feed.atom", "google-merchant", tmp_path / "a.jsonl", media_root=media, fetch=False)
    cap = manifest_rows(tmp_path / "a.jsonl")["CAP-9"]
    assert cap["title"] == "Caf\u00e9 Cap" and cap["category"] == "Apparel & Accessories/Hats"
    assert cap["attributes"] == {"color": "Blue"} and names(cap["images"]) == ["cap.png"]
    tsv = "id\ttitle\tcolor\nMUG-2\tCaf\u00e9 Mug\tGreen\n"  # Excel's "Unicode text": UTF-16 with a BOM
    (tmp_path / "feed.txt").write_bytes(tsv.encode("utf-16"))
    import_export(tmp_path / "feed.txt", "google-merchant", tmp_path / "t.jsonl", fetch=False)
    assert manifest_rows(tmp_path / "t.jsonl")["MUG-2"]["title"] == "Caf\u00e9 Mug"


# ----------------------------------------------------------------------------------- bad exports
def test_wrong_format_names_missing_columns_and_the_right_format(tmp_path):
    src = write_csv(tmp_path / "wc.csv", WOO_HEADER, [{"ID": "1", "Type": "simple", "Name": "A"}])
    with pytest.raises(RecordError) as e:
        import_export(src, "shopify", tmp_path / "m.jsonl")
    msg = str(e.value)
    assert str(src) in msg and "['Handle', 'Title']" in msg and "--format woocommerce" in msg
    assert not (tmp_path / "m.jsonl").exists()


def test_unreadable_encoding_and_archive(tmp_path):
    src = tmp_path / "latin1.csv"
    src.write_bytes("Handle,Title\ncaf\xe9,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(RecordError, match=r"latin1\.csv:2: not UTF-8 text.*byte 0xe9.*iconv"):
        import_export(src, "shopify", tmp_path / "m.jsonl")
    xlsx = tmp_path / "products.xlsx"
    xlsx.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(RecordError, match="ZIP/XLSX.*CSV UTF-8"):
        import_export(xlsx, "shopify", tmp_path / "m.jsonl")
    bad_xml = tmp_path / "feed.xml"
    bad_xml.write_text("<rss>\n<channel><item><g:id>1</item></channel></rss>")
    with pytest.raises(RecordError, match=r"feed\.xml:\d+: not well-formed XML"):
        import_export(bad_xml, "google-merchant", tmp_path / "m.jsonl")


def test_shifted_row_is_skipped_and_the_rest_imported(tmp_path):
    src = tmp_path / "p.csv"
    src.write_text("Handle,Title,Vendor\nok,Good product,Acme\nbad,Broken, unquoted,Acme\nalso-ok,Fine,Acme\n")
    out = tmp_path / "m.jsonl"
    r = import_export(src, "shopify", out)
    assert [p.id for p in read_manifest(out)] == ["ok", "also-ok"]
    assert r.skipped[0][0] == f"{src}:3" and "4 fields where the header has 3" in r.skipped[0][1]


def test_nothing_importable_is_an_error_and_keeps_the_old_manifest(tmp_path):
    out = tmp_path / "m.jsonl"
    out.write_text('{"id": "keep", "title": "old"}\n')
    src = write_csv(tmp_path / "p.csv", ["Handle", "Title", "Image Src"], [{"Handle": "", "Title": "x"}])
    with pytest.raises(RecordError, match="no product could be imported.*blank Handle"):
        import_export(src, "shopify", out)
    assert out.read_text() == '{"id": "keep", "title": "old"}\n'


def test_html_to_text():
    assert html_to_text("<div>A&amp;B<br/>C</div><script>x()</script><ol><li> one </li><li>two</li></ol>") == "A&B\nC\n- one\n- two"
    assert html_to_text("plain  text\n\n second line") == "plain text\nsecond line"


# -------------------------------------------------------------------------- fetching, CLI, cache
class _Images(http.server.BaseHTTPRequestHandler):
    body = b""
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        type(self).hits.append(self.path)
        if self.path.split("?")[0].endswith(".png"):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)
        else:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>login</html>")

    def log_message(self, *a):
        pass


def test_urls_are_fetched_once_into_a_hash_named_cache(tmp_path, media):
    _Images.body = (media / "mug.png").read_bytes()
    _Images.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        src = write_csv(tmp_path / "p.csv", ["Handle", "Title", "Image Src", "Image Position"],
                        [{"Handle": "mug", "Title": "Mug", "Image Src": f"{base}/files/mug.png?v=3", "Image Position": "1"},
                         {"Handle": "mug", "Image Src": f"{base}/login", "Image Position": "2"}])
        out = tmp_path / "out" / "m.jsonl"
        r1 = import_export(src, "shopify", out, timeout=5)
        r2 = import_export(src, "shopify", out, timeout=5)
    finally:
        server.shutdown()
    img = read_manifest(out)[0].images
    assert len(img) == 1 and Path(img[0]).parent == out.parent / "media-cache" and img[0].endswith(".png")
    assert Path(img[0]).read_bytes() == _Images.body and len(Path(img[0]).stem) == 24
    assert r1.media["fetched"] == 1 and r2.media["cached"] == 1 and r2.media["fetched"] == 0
    assert _Images.hits.count("/files/mug.png?v=3") == 1  # the second import read the cache
    assert [why for _, _, why in r1.misses] == ["URL fetch gave text/html, not media"]


def test_a_full_disk_stops_the_import_with_the_fix_and_keeps_the_old_manifest(tmp_path, media, monkeypatch, capsys):
    import errno

    from core.data import importers as I

    _Images.body = (media / "mug.png").read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    real = Path.write_bytes

    def full(self, data):
        if self.name.endswith(".part"):
            real(self, data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", full)
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        src = write_csv(tmp_path / "p.csv", ["Handle", "Title", "Image Src"],
                        [{"Handle": "mug", "Title": "Mug", "Image Src": f"{base}/files/mug.png"}])
        out = tmp_path / "out" / "m.jsonl"
        out.parent.mkdir()
        out.write_text('{"id": "keep", "title": "old"}\n')
        assert I.main(["--format", "shopify", "--in", str(src), "--out", str(out)]) == 2
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Fix: free disk space, then run the import again" in err
    assert out.read_text() == '{"id": "keep", "title": "old"}\n'
    assert not list((out.parent / "media-cache").glob("*.part"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetching_stops_after_three_failed_hosts(tmp_path):
    """Without a network each URL would cost a timeout: after 3 refused hosts the rest are listed untried."""
    urls = [f"http://127.0.0.1:{free_port()}/img/{i}.jpg" for i in range(5)]
    rows = [{"Handle": f"p{i}", "Title": f"Product {i}", "Image Src": u} for i, u in enumerate(urls)]
    out = tmp_path / "m.jsonl"
    r = import_export(write_csv(tmp_path / "p.csv", ["Handle", "Title", "Image Src"], rows), "shopify", out, timeout=2)
    assert r.products == 5 and [ref for _, ref, _ in r.misses] == urls
    assert all("URL fetch failed" in why for _, _, why in r.misses[:3])
    assert all(why.startswith("URL not fetched: network unreachable (3 fetches failed") for _, _, why in r.misses[3:])
    assert len((tmp_path / "m.jsonl.misses.txt").read_text().splitlines()) == 5


def test_cli_import_then_read_and_build_cache(tmp_path, media):
    out = tmp_path / "out" / "manifest.jsonl"
    proc = subprocess.run([sys.executable, "-m", "core.data.records", "import", "--format", "shopify",
                           "--in", str(shopify_export(tmp_path)), "--out", str(out), "--media-root", str(media),
                           "--timeout", "2", "--json", str(tmp_path / "report.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2 products from 6 rows" in proc.stdout and "missed 1" in proc.stdout and DEAD_URL in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["products"] == 2 and report["misses"][0]["ref"] == DEAD_URL
    bad = subprocess.run([sys.executable, "-m", "core.data.records", "import", "--format", "magento",
                          "--in", str(tmp_path / "products_export.csv"), "--out", str(tmp_path / "x.jsonl")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "missing column(s) ['sku', 'name']" in bad.stderr and "Traceback" not in bad.stderr

    from core.data.features import FeatureCache, build_cache

    products = read_manifest(out)
    s = build_cache(out, tmp_path / "cache", device="cpu", progress=False, products=products)
    assert s["products"] == 2 and not s["failures"]
    cache = FeatureCache(tmp_path / "cache")
    assert cache.present("classic-tee")[:3] == [True, True, True] and cache.present("stoneware-mug")[:3] == [True, True, True]

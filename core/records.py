"""Product records and the manifest formats that hold them.

Readers:
- shop3k `manifest.jsonl` (one JSON object a line, paths relative to the manifest);
- a flat CSV (one row a product; `images` holds `;`-separated paths; other unknown columns are attributes);
- the M5Product layout (a CSV/TSV whose `property` column holds `p:v;p:v` strings).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Union

from .errors import RecordError

AttrValue = Union[str, list]


@dataclass
class Product:
    """One product. Every modality field may be empty."""

    id: str
    title: str = ""
    description: str = ""
    category: str | None = None
    attributes: dict[str, AttrValue] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    video: str | None = None
    audio: str | None = None
    source: str | None = None
    split: str | None = None

    @property
    def text(self) -> str:
        return " ".join(s.strip() for s in (self.title, self.description) if s and s.strip())

    def declared(self) -> dict[str, bool]:
        """Which modalities the record names (before any file is opened)."""
        return {
            "text": bool(self.text),
            "table": bool(self.attributes),
            "image": bool(self.images),
            "video": bool(self.video),
            "audio": bool(self.audio),
        }

    def check(self) -> "Product":
        if not any(self.declared().values()):
            raise RecordError(
                f"product {self.id!r} has no usable modality (no title, description, attributes, "
                "images, video or audio). Fix: give it at least one, or drop it from the manifest."
            )
        return self

    def to_json(self) -> dict:
        return {
            "id": self.id, "source": self.source, "title": self.title, "description": self.description,
            "category": self.category, "attributes": self.attributes, "split": self.split,
            "images": self.images, "video": self.video, "audio": self.audio,
        }


def _resolve(base: Path, p: str | None) -> str | None:
    if not p:
        return None
    path = Path(p)
    return str(path if path.is_absolute() else base / path)


def _clean_attributes(attrs: object, where: str) -> dict[str, AttrValue]:
    if attrs in (None, ""):
        return {}
    if not isinstance(attrs, dict):
        raise RecordError(f"{where}: 'attributes' must be an object of key -> value or list, got {type(attrs).__name__}.")
    out: dict[str, AttrValue] = {}
    for k, v in attrs.items():
        if v is None or v == "" or v == []:
            continue
        out[str(k)] = [str(x) for x in v] if isinstance(v, (list, tuple)) else str(v)
    return out


def product_from_dict(d: dict, base: Path, where: str = "record") -> Product:
    """Build a Product from a shop3k-style dict; relative paths are resolved against `base`."""
    if "id" not in d or d["id"] in (None, ""):
        raise RecordError(f"{where}: missing 'id'. Fix: give every product a unique id.")
    images = d.get("images") or []
    if isinstance(images, str):
        images = [s for s in images.split(";") if s.strip()]
    return Product(
        id=str(d["id"]),
        title=str(d.get("title") or ""),
        description=str(d.get("description") or ""),
        category=(str(d["category"]) if d.get("category") not in (None, "") else None),
        attributes=_clean_attributes(d.get("attributes"), where),
        images=[_resolve(base, s.strip()) for s in images if s and str(s).strip()],
        video=_resolve(base, d.get("video")),
        audio=_resolve(base, d.get("audio")),
        source=d.get("source"),
        split=d.get("split"),
    )


def parse_property_string(s: str) -> dict[str, AttrValue]:
    """M5Product `p:v;p:v` property string -> attributes. A repeated key becomes a list."""
    out: dict[str, AttrValue] = {}
    for part in (s or "").split(";"):
        if ":" not in part:
            continue
        k, v = part.split(":", 1)
        k, v = k.strip(), v.strip()
        if not k or not v:
            continue
        if k in out:
            prev = out[k]
            out[k] = (prev if isinstance(prev, list) else [prev]) + [v]
        else:
            out[k] = v
    return out


_CSV_FIELDS = {"id", "title", "description", "category", "images", "video", "audio", "source", "split", "property", "attributes"}


def _read_csv(path: Path) -> Iterator[Product]:
    text = path.read_text(encoding="utf-8-sig")
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    if not reader.fieldnames or "id" not in reader.fieldnames:
        raise RecordError(f"{path}: a CSV manifest needs a header with an 'id' column. Fix: add one.")
    for n, row in enumerate(reader, start=2):
        row = {k: (v or "").strip() for k, v in row.items() if k is not None}
        attrs: dict[str, AttrValue] = {}
        if row.get("property"):
            attrs.update(parse_property_string(row["property"]))
        if row.get("attributes"):
            try:
                attrs.update(_clean_attributes(json.loads(row["attributes"]), f"{path}:{n}"))
            except json.JSONDecodeError:
                attrs.update(parse_property_string(row["attributes"]))
        for k, v in row.items():
            if k not in _CSV_FIELDS and v:
                attrs[k] = v
        d = {k: row.get(k) for k in _CSV_FIELDS if k in row}
        d["attributes"] = attrs
        yield product_from_dict(d, path.parent, f"{path}:{n}")


def read_manifest(path: str | Path, check: bool = True) -> list[Product]:
    """Read a manifest (.jsonl / .json / .csv / .tsv). Products with no modality are rejected by name."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: manifest not found. Fix: pass the path of a manifest.jsonl or CSV file.")
    suffix = path.suffix.lower()
    products: list[Product]
    if suffix in (".csv", ".tsv"):
        products = list(_read_csv(path))
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = data.get("products", [])
        products = [product_from_dict(d, path.parent, f"{path}[{i}]") for i, d in enumerate(data)]
    else:
        products = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{n}: not valid JSON ({e.msg}). Fix: one JSON object per line.") from None
            products.append(product_from_dict(d, path.parent, f"{path}:{n}"))
    ids = [p.id for p in products]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise RecordError(f"{path}: duplicate product ids {dup}. Fix: make ids unique.")
    if check:
        for p in products:
            p.check()
    return products


def write_manifest(products: Iterable[Product], path: str | Path) -> Path:
    """Write products as manifest.jsonl, paths relative to the manifest where possible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()

    def rel(p: str | None) -> str | None:
        if not p:
            return p
        try:
            return str(Path(p).resolve().relative_to(base))
        except ValueError:
            return str(Path(p).resolve())

    with open(path, "w", encoding="utf-8") as f:
        for p in products:
            d = p.to_json()
            d["images"] = [rel(s) for s in p.images]
            d["video"], d["audio"] = rel(p.video), rel(p.audio)
            f.write(json.dumps(d) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m core.records import ...`: a shop-platform export -> manifest.jsonl (see core.importers)."""
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] != "import":
        print("usage: python -m core.records import --format shopify|woocommerce|magento|google-merchant "
              "--in FILE --out manifest.jsonl [--media-root DIR]", file=sys.stderr)
        return 2
    from .importers import main as import_main

    return import_main(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())

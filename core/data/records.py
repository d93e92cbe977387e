"""Product records and the manifest formats that hold them.

Readers:
- shop3k `manifest.jsonl` (one JSON object a line, paths relative to the manifest);
- a flat CSV (one row a product; `images` holds `;`-separated paths; other unknown columns are attributes);
- the M5Product layout (a CSV/TSV whose `property` column holds `p:v;p:v` strings).
"""
from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Union

from ..errors import RecordError

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


_SCALAR = (str, int, float, bool)


def _clean_attributes(attrs: object, where: str) -> dict[str, AttrValue]:
    if attrs in (None, ""):
        return {}
    if not isinstance(attrs, dict):
        raise RecordError(f"{where}: 'attributes' must be an object of key -> value or list, got "
                          f"{type(attrs).__name__}. Fix: write it as {{\"color\": \"red\", \"size\": [\"S\", \"M\"]}}.")
    out: dict[str, AttrValue] = {}
    for k, v in attrs.items():
        if v is None or v == "" or v == []:
            continue
        if isinstance(v, (list, tuple)) and all(isinstance(x, _SCALAR) for x in v):
            out[str(k)] = [str(x) for x in v]
        elif isinstance(v, _SCALAR):
            out[str(k)] = str(v)
        else:  # a nested object would become its Python repr: a silently wrong table
            raise RecordError(f"{where}: attribute {str(k)[:60]!r} must be a text, a number or a list of them, "
                              f"got a nested {type(v).__name__}. Fix: flatten it into 'key': 'value' pairs.")
    return out


def _text_field(d: dict, key: str, where: str) -> str | None:
    """A field that must be one text (numbers are accepted and written as text)."""
    v = d.get(key)
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise RecordError(f"{where}: {key!r} must be a text, got {type(v).__name__} {_short(v)}. "
                          f"Fix: write \"{key}\": \"...\" (or null when there is none).")
    return str(v)


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def product_from_dict(d: dict, base: Path, where: str = "record") -> Product:
    """Build a Product from a shop3k-style dict; relative paths are resolved against `base`.
    Raises RecordError naming `where` and the field when a value has the wrong type."""
    if not isinstance(d, dict):
        raise RecordError(f"{where}: a product must be a JSON object, got {type(d).__name__} {_short(d)}. "
                          "Fix: write one {\"id\": ..., \"title\": ...} object per product.")
    pid = _text_field(d, "id", where)
    if pid is None:
        raise RecordError(f"{where}: missing 'id'. Fix: give every product a unique id.")
    images = d.get("images") or []
    if isinstance(images, str):
        images = [s for s in images.split(";") if s.strip()]
    if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
        raise RecordError(f"{where}: 'images' must be a list of file paths or one ';'-separated text, got "
                          f"{type(images).__name__} {_short(images)}. Fix: write \"images\": [\"images/a.jpg\"].")
    return Product(
        id=pid,
        title=_text_field(d, "title", where) or "",
        description=_text_field(d, "description", where) or "",
        category=_text_field(d, "category", where),
        attributes=_clean_attributes(d.get("attributes"), where),
        images=[_resolve(base, s.strip()) for s in images if s.strip()],
        video=_resolve(base, _text_field(d, "video", where)),
        audio=_resolve(base, _text_field(d, "audio", where)),
        source=_text_field(d, "source", where),
        split=_text_field(d, "split", where),
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


@dataclass
class ManifestProblem:
    """One manifest line (or .json item) that was skipped, and why."""

    where: str  # "path:line" (jsonl / csv) or "path[index]" (.json)
    message: str  # the full RecordError message, naming `where` and the fix
    line: int | None = None
    product_id: str | None = None

    def to_json(self) -> dict:
        return {"where": self.where, "line": self.line, "id": self.product_id, "message": self.message}


@dataclass
class ManifestReport:
    """What `scan_manifest` read: the usable products and the skipped lines."""

    path: Path
    products: list[Product]
    problems: list[ManifestProblem]

    def raise_first(self) -> None:
        """Strict reading: the first problem as a RecordError (with how many more there are)."""
        if self.problems:
            more = len(self.problems) - 1
            raise RecordError(self.problems[0].message + (f" ({more} more bad lines in {self.path}.)" if more else ""))


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by surrogateescape


def _not_utf8(where: str, raw: bytes, e: UnicodeDecodeError) -> RecordError:
    return RecordError(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}; the file was "
                       "probably saved as Latin-1 or Windows-1252). Fix: re-save the manifest as UTF-8.")


def _too_deep(where: str, text: str, find_line: bool = False) -> RecordError:
    limit = sys.getrecursionlimit()
    line = _deep_line(text, limit) if find_line else None
    at = f" (from line {line})" if line else ""
    return RecordError(f"{where}: JSON nested deeper than the reader's limit of {limit} levels{at}; a product "
                       "record needs at most 3. Fix: flatten the record (attributes as 'key': 'value' pairs).")


def _deep_line(text: str, limit: int) -> int | None:
    """1-based line where bracket nesting first passes `limit` (strings skipped); only run after a failure."""
    depth = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > limit:
                return text.count("\n", 0, m.start()) + 1
        elif c in "]}":
            depth -= 1
    return None


def _loads(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{where}: not valid JSON ({e.msg} at column {e.colno}). "
                          "Fix: one JSON object per line (check quotes and commas).") from None
    except RecursionError:
        raise _too_deep(where, text) from None


Found = list  # of (Product, where, line): products read, before the duplicate and modality checks


def _scan_jsonl(path: Path, raw: bytes, found: Found, report: ManifestReport) -> None:
    for n, line in enumerate(raw.split(b"\n"), start=1):  # bytes: str.splitlines would also cut at U+2028
        where, d = f"{path}:{n}", None
        try:
            try:
                text = line.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(where, line, e) from None
            if not text.strip():
                continue
            d = _loads(text, where)
            found.append((product_from_dict(d, path.parent, where), where, n))
        except RecordError as e:
            report.problems.append(ManifestProblem(where, str(e), n, _id_of(d)))


def _scan_json(path: Path, raw: bytes, found: Found, report: ManifestReport) -> None:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:  # one document: the whole file is unusable
        line = raw.count(b"\n", 0, e.start) + 1
        raise _not_utf8(f"{path}:{line}", raw[raw.rfind(b"\n", 0, e.start) + 1:], _shift(e, raw)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}). "
                          "Fix: a .json manifest is one list of product objects (or {\"products\": [...]}).") from None
    except RecursionError:
        raise _too_deep(str(path), text, find_line=True) from None
    if isinstance(data, dict):
        data = data.get("products", [])
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a list of products (or {{\"products\": [...]}}), got "
                          f"{type(data).__name__}. Fix: wrap the products in a JSON list.")
    for i, d in enumerate(data):
        where = f"{path}[{i}]"
        try:
            found.append((product_from_dict(d, path.parent, where), where, None))
        except RecordError as e:
            report.problems.append(ManifestProblem(where, str(e), None, _id_of(d)))


def _shift(e: UnicodeDecodeError, raw: bytes) -> UnicodeDecodeError:
    """The decode error re-based on its own line, so the column in the message is the line's."""
    start = raw.rfind(b"\n", 0, e.start) + 1
    return UnicodeDecodeError(e.encoding, raw[start:], e.start - start, e.end - start, e.reason)


def _scan_csv(path: Path, raw: bytes, found: Found, report: ManifestReport) -> None:
    # surrogateescape keeps undecodable bytes, so one Latin-1 row is reported by line, not the whole file
    text = raw.decode("utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8", errors="surrogateescape")
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    try:
        fieldnames = reader.fieldnames
    except csv.Error as e:
        raise RecordError(f"{path}:1: unreadable CSV header ({e}). Fix: the first line names the columns, "
                          "one of them 'id'.") from None
    if not fieldnames or "id" not in fieldnames:
        raise RecordError(f"{path}: a CSV manifest needs a header with an 'id' column. Fix: add one.")
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # the reader restarts at the next line, so the other rows still read
            where = f"{path}:{start}"
            if "field larger" in str(e):
                msg = (f"{where}: a field of this row is longer than the CSV limit of {csv.field_size_limit()} "
                       "characters. Fix: shorten it (long text belongs in a file the record names).")
            else:
                msg = f"{where}: unreadable CSV row ({e}). Fix: close the row's quotes or quote its delimiters."
            report.problems.append(ManifestProblem(where, msg, start))
            continue
        where = f"{path}:{start}"
        try:
            found.append((_csv_product(path, row, where), where, start))
        except RecordError as e:
            report.problems.append(ManifestProblem(where, str(e), start, (row.get("id") or None)))


def _csv_product(path: Path, row: dict, where: str) -> Product:
    if None in row:
        raise RecordError(f"{where}: {len(row[None])} more fields than the header has columns. "
                          "Fix: quote fields that contain the delimiter.")
    row = {k: (v or "").strip() for k, v in row.items()}
    for k, v in row.items():
        bad = _UNDECODABLE.search(v)
        if bad:
            byte = ord(bad.group()) - 0xDC00
            raise RecordError(f"{where}: column {k!r} is not UTF-8 (byte 0x{byte:02x}; the file was probably saved "
                              "as Latin-1 or Windows-1252). Fix: re-save the manifest as UTF-8.")
    attrs: dict[str, AttrValue] = {}
    if row.get("property"):
        attrs.update(parse_property_string(row["property"]))
    if row.get("attributes"):
        try:
            parsed = json.loads(row["attributes"])
        except (json.JSONDecodeError, RecursionError):
            attrs.update(parse_property_string(row["attributes"]))
        else:
            attrs.update(_clean_attributes(parsed, where))
    for k, v in row.items():
        if k not in _CSV_FIELDS and v:
            attrs[k] = v
    d = {k: row.get(k) for k in _CSV_FIELDS if k in row}
    d["attributes"] = attrs
    return product_from_dict(d, path.parent, where)


_CSV_FIELDS = {"id", "title", "description", "category", "images", "video", "audio", "source", "split", "property", "attributes"}


def scan_manifest(path: str | Path, check: bool = True) -> ManifestReport:
    """Read a manifest (.jsonl / .json / .csv / .tsv), keeping every usable product and listing each bad
    line (wrong type, not UTF-8, not JSON, too deep, too long a CSV field, duplicate id, and with `check`
    no usable modality) as a ManifestProblem. Raises RecordError only when the whole file is unusable."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: manifest not found. Fix: pass the path of a manifest.jsonl or CSV file.")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RecordError(f"{path}: cannot read the manifest ({e.strerror}). Fix: check the path and its permissions.") from None
    report = ManifestReport(path, [], [])
    found: Found = []
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        _scan_csv(path, raw, found, report)
    elif suffix == ".json":
        _scan_json(path, raw, found, report)
    else:
        _scan_jsonl(path, raw, found, report)
    seen: set[str] = set()
    for p, where, line in found:
        try:
            if p.id in seen:
                raise RecordError(f"duplicate product id {p.id!r} (the first one is kept). Fix: make ids unique.")
            if check:
                p.check()
        except RecordError as e:
            report.problems.append(ManifestProblem(where, f"{where}: {e}", line, p.id))
            continue
        seen.add(p.id)
        report.products.append(p)
    report.problems.sort(key=lambda q: _order(q.where))
    return report


def _id_of(d: object) -> str | None:
    pid = d.get("id") if isinstance(d, dict) else None
    return str(pid) if isinstance(pid, (str, int)) else None


def _order(where: str) -> int:
    """The line (or item index) at the end of a `where`, to list problems in file order."""
    m = re.search(r"[:\[](\d+)\]?$", where)
    return int(m.group(1)) if m else 0


def read_manifest(path: str | Path, check: bool = True) -> list[Product]:
    """Read a manifest strictly: the first bad line raises a RecordError naming the file, the line and the fix.
    `scan_manifest` reads the same formats but skips bad lines and lists them."""
    report = scan_manifest(path, check)
    report.raise_first()
    return report.products


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
    """`python -m core.data.records import ...`: a shop-platform export -> manifest.jsonl (see core.data.importers)."""
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] != "import":
        print("usage: python -m core.data.records import --format shopify|woocommerce|magento|google-merchant "
              "--in FILE --out manifest.jsonl [--media-root DIR]", file=sys.stderr)
        return 2
    from .importers import main as import_main

    return import_main(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())

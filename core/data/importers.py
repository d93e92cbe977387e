"""Importers: shop-platform product exports -> the shop3k manifest.jsonl that `core.data.records` reads.

Formats, with the columns each platform documents:
- `shopify`: products CSV; one product per `Handle` across its variant and image rows (the 2024 column
  names `URL handle`, `Description`, `Product image URL`, ... are read as well);
- `woocommerce`: product CSV export; `variation` rows fold into their `Parent`;
- `magento`: Magento 2 catalog product export CSV; children named in `configurable_variations` fold into
  their configurable parent; store-view rows (a `store_view_code`) are ignored;
- `google-merchant`: Merchant Center feed as TSV/CSV or RSS 2.0 / Atom XML (`g:` namespace); items of
  one `item_group_id` fold into one product.

Media: local paths resolve against the export's folder; `media_root` finds files by name (the basename of
the URL path); URLs are fetched into a cache folder beside the output. A reference that gives no file is
a miss: listed in the report, never fatal. A bad row is skipped and listed; the rest is imported.
The category is never copied into the attributes: evaluation retrieves by category, and the table
modality must not carry the label.
"""
from __future__ import annotations

import argparse
import codecs
import csv
import hashlib
import html
import io
import json
import os
import re
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

from ..errors import RecordError, ScaleError, write_problem
from .records import Product, write_manifest

FORMATS = ("shopify", "woocommerce", "magento", "google-merchant")
MEDIA_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mp4", ".mov", ".webm",
              ".mkv", ".wav", ".mp3", ".ogg", ".flac", ".m4a"}
CONTENT_EXTS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif",
                "video/mp4": ".mp4", "audio/mpeg": ".mp3", "audio/wav": ".wav", "audio/ogg": ".ogg"}
MAX_FETCH_BYTES = 50 * 2**20
NET_FAILURES_TO_STOP = 3  # consecutive connection failures after which no more URLs are tried
G_NS = "http://base.google.com/ns/1.0"
ATOM_NS = "http://www.w3.org/2005/Atom"


# ---------------------------------------------------------------------------------------------- text
_BLOCK_TAGS = {"p", "div", "br", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table",
               "thead", "tbody", "section", "article", "header", "footer", "blockquote", "pre", "hr", "figure",
               "figcaption", "address", "main", "aside", "nav"}
_SKIP_TAGS = {"script", "style", "template", "noscript"}
_LOOKS_HTML = re.compile(r"<\s*/?\s*[a-zA-Z][^>]*>|&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")


class _TextParser(HTMLParser):
    """Collects text; block tags become line breaks and list items `- ` bullets (as shop3k writes them)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.bullet = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _SKIP_TAGS:
            self.skip += 1
        elif tag == "li":
            self.bullet = True
        elif tag in _BLOCK_TAGS and not self.bullet:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _BLOCK_TAGS and not self.bullet:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK_TAGS or tag == "li":
            self.parts.append("\n")
            self.bullet = False

    def handle_data(self, data: str) -> None:
        if self.skip or not data.strip() and self.bullet:
            return
        if self.bullet:
            self.parts.append("\n- ")
            self.bullet = False
        self.parts.append(data)


def html_to_text(s: str) -> str:
    """HTML (or plain text) -> plain text: entities unescaped, block tags and <br> as line breaks."""
    if not s:
        return ""
    if _LOOKS_HTML.search(s):
        p = _TextParser()
        p.feed(s)
        p.close()
        s = "".join(p.parts)
    lines = (" ".join(line.replace("\xa0", " ").split()) for line in s.splitlines())
    return "\n".join(line for line in lines if line and line != "-")


def _plain(s: str | None) -> str:
    """A one-line field (title, value): entities unescaped, whitespace collapsed."""
    s = s or ""
    if "&" in s and ";" in s:
        s = html.unescape(s)
    return " ".join(s.replace("\xa0", " ").split())


def _split(s: str | None, sep: str = ",") -> list[str]:
    """Split a list cell; `\\,` is an escaped separator (WooCommerce writes it so)."""
    if not s:
        return []
    parts = re.split(rf"(?<!\\){re.escape(sep)}", s)
    return [p for p in (_plain(x.replace("\\" + sep, sep)) for x in parts) if p]


def _category_path(s: str | None, sep: str = ">", drop_root: bool = False) -> str | None:
    """`A > B > C` -> `A/B/C` (the shop3k form)."""
    parts = [_plain(x) for x in (s or "").split(sep)]
    parts = [p for p in parts if p]
    if drop_root:
        parts = parts[1:]
    return "/".join(parts) or None


def _deepest(paths: Iterable[str | None]) -> str | None:
    """The most specific of several category paths (first one on ties)."""
    best = None
    for p in paths:
        if p and (best is None or p.count("/") > best.count("/")):
            best = p
    return best


# --------------------------------------------------------------------------------------------- report
@dataclass
class ImportReport:
    format: str
    source: str
    rows: int = 0
    products: int = 0
    folded_rows: int = 0
    ignored_rows: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)       # (file:line or id, reason)
    misses: list[tuple[str, str, str]] = field(default_factory=list)   # (product id, reference, reason)
    media: dict[str, int] = field(default_factory=lambda: {"local": 0, "media_root": 0, "fetched": 0, "cached": 0})
    out: str | None = None

    def to_dict(self) -> dict:
        return {
            "format": self.format, "in": self.source, "out": self.out, "rows": self.rows, "products": self.products,
            "folded_rows": self.folded_rows, "ignored_rows": self.ignored_rows, "media": dict(self.media),
            "skipped": [{"where": w, "reason": r} for w, r in self.skipped],
            "misses": [{"product": p, "ref": ref, "reason": r} for p, ref, r in self.misses],
        }


# ---------------------------------------------------------------------------------------------- media
class MediaResolver:
    """Turns image references of an export into local files; every failure becomes a listed miss."""

    def __init__(self, export_dir: Path, cache_dir: Path | None, media_root: Path | None = None,
                 fetch: bool = True, timeout: float = 5.0, max_bytes: int = MAX_FETCH_BYTES) -> None:
        if media_root is not None and not Path(media_root).is_dir():
            raise RecordError(f"{media_root}: --media-root is not a folder. Fix: pass the folder that holds the "
                              "exported images (they are found there by file name).")
        self.export_dir = Path(export_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.media_root = Path(media_root) if media_root else None
        self.fetch = fetch and self.cache_dir is not None
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._by_name: dict[str, Path] | None = None
        self._dead_hosts: dict[str, str] = {}
        self._net_failures = 0
        self._stopped: str | None = None
        self._memo: dict[str, tuple[str | None, str]] = {}

    def _root_lookup(self, name: str) -> Path | None:
        if self.media_root is None or not name:
            return None
        if self._by_name is None:  # one walk; the shallowest file of a name wins (sorted by depth, then path)
            files = sorted((p for p in self.media_root.rglob("*") if p.is_file()),
                           key=lambda p: (len(p.parts), str(p)))
            self._by_name = {}
            for p in files:
                self._by_name.setdefault(p.name, p)
        return self._by_name.get(name)

    def resolve(self, ref: str, counts: dict[str, int]) -> tuple[str | None, str]:
        """(local path or None, how it was found / why it was missed)."""
        if ref not in self._memo:
            self._memo[ref] = self._resolve(ref)
        path, how = self._memo[ref]
        if path is not None:
            counts[how] = counts.get(how, 0) + 1
        return path, how

    def _resolve(self, ref: str) -> tuple[str | None, str]:
        if ref.startswith("//"):
            ref = "https:" + ref  # protocol-relative CDN links (Shopify writes them)
        parts = urlsplit(ref)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            name = unquote(PurePosixPath(parts.path).name)
            hit = self._root_lookup(name)
            if hit is not None:
                return str(hit), "media_root"
            return self._fetched(ref)
        if scheme == "file":
            ref = unquote(parts.path)
        elif scheme and len(scheme) > 1:  # one letter is a Windows drive
            return None, f"unsupported URL scheme {scheme!r} (only http, https and local paths)"
        p = Path(ref)
        candidates = [p] if p.is_absolute() else []
        candidates.append(self.export_dir / ref.lstrip("/\\"))  # Magento's `/m/h/x.jpg` is relative to its media
        for c in candidates:
            if c.is_file():
                return str(c), "local"
        hit = self._root_lookup(PurePosixPath(ref.replace("\\", "/")).name)
        if hit is not None:
            return str(hit), "media_root"
        where = " or ".join(str(c) for c in candidates)
        extra = f", nor under --media-root {self.media_root}" if self.media_root else " (pass --media-root DIR to find it by name)"
        return None, f"file not found at {where}{extra}"

    def _cache_name(self, url: str, ext: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / (hashlib.sha256(url.encode()).hexdigest()[:24] + ext)

    def _fetched(self, url: str) -> tuple[str | None, str]:
        if self.cache_dir is not None and self.cache_dir.is_dir():
            stem = hashlib.sha256(url.encode()).hexdigest()[:24]
            for c in sorted(self.cache_dir.glob(stem + ".*")):
                if c.suffix != ".part":
                    return str(c), "cached"
        if not self.fetch:
            hint = " (pass --media-root DIR to find it by name)" if self.media_root is None else f" and not under --media-root {self.media_root}"
            return None, f"URL not fetched: fetching is off{hint}"
        if self._stopped:
            return None, f"URL not fetched: {self._stopped}"
        host = urlsplit(url).netloc
        if host in self._dead_hosts:
            return None, f"URL not fetched: host {host} failed before ({self._dead_hosts[host]})"
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "scale-explorer-importer/1"})
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                ctype = r.headers.get_content_type()
                if not ctype.startswith(("image/", "video/", "audio/")) and ctype != "application/octet-stream":
                    return None, f"URL fetch gave {ctype}, not media"
                data = r.read(self.max_bytes + 1)
        except urllib.error.HTTPError as e:
            self._net_failures = 0
            return None, f"URL fetch failed: HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = str(getattr(e, "reason", e))
            self._dead_hosts[host] = reason
            self._net_failures += 1
            if self._net_failures >= NET_FAILURES_TO_STOP:
                self._stopped = f"network unreachable ({self._net_failures} fetches failed in a row, last: {reason})"
            if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
                reason = f"no answer within the {self.timeout:g} s timeout"
            return None, f"URL fetch failed: {reason}"
        self._net_failures = 0
        if len(data) > self.max_bytes:
            return None, f"URL gave more than the {self.max_bytes // 2**20} MiB limit"
        if not data:
            return None, "URL gave an empty file"
        ext = PurePosixPath(urlsplit(url).path).suffix.lower()
        ext = ext if ext in MEDIA_EXTS else CONTENT_EXTS.get(ctype, ".bin")
        target = self._cache_name(url, ext)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)  # a killed run never leaves a half file under the final name
        except OSError as e:  # a full disk stops the import; what was fetched stays cached for the next run
            tmp.unlink(missing_ok=True)
            raise RecordError(f"{write_problem(target, e)}. Fix: free disk space, then run the import again: the "
                              f"files fetched so far are reused from {self.cache_dir}.") from None
        return str(target), "fetched"


# --------------------------------------------------------------------------------------------- drafts
@dataclass
class _Draft:
    """A product being gathered from one or more rows."""

    id: str
    where: str
    title: str = ""
    description: str = ""
    category: str | None = None
    attrs: dict[str, list[str]] = field(default_factory=dict)
    images: list[tuple[float, int, str]] = field(default_factory=list)  # (position, order seen, reference)

    def add(self, key: str, *values: str | None) -> None:
        key = _plain(key).lower()
        for v in values:
            v = _plain(v)
            if key and v and v not in self.attrs.setdefault(key, []):
                self.attrs[key].append(v)

    def image(self, ref: str | None, position: float = float("inf")) -> None:
        ref = (ref or "").strip()
        if ref and ref.lower() != "no_selection":
            self.images.append((position, len(self.images), ref))

    def fill(self, title: str | None = None, description: str | None = None, category: str | None = None) -> None:
        """First non-empty value wins: variant rows never overwrite the product's own fields."""
        if not self.title and title:
            self.title = _plain(title)
        if not self.description and description:
            self.description = html_to_text(description)
        if not self.category and category:
            self.category = category


def _finish(drafts: Iterable[_Draft], fmt: str, media: MediaResolver, report: ImportReport) -> list[Product]:
    products: list[Product] = []
    seen: dict[str, str] = {}
    for d in drafts:
        if d.id in seen:
            report.skipped.append((d.where, f"duplicate product id {d.id!r} (first at {seen[d.id]})"))
            continue
        refs: list[str] = []
        for _, _, ref in sorted(d.images):
            if ref not in refs:
                refs.append(ref)
        images = []
        for ref in refs:
            path, how = media.resolve(ref, report.media)
            if path is None:
                report.misses.append((d.id, ref, how))
            elif path not in images:
                images.append(path)
        attrs = {k: (v[0] if len(v) == 1 else list(v)) for k, v in d.attrs.items() if v}
        p = Product(id=d.id, title=d.title, description=d.description, category=d.category, attributes=attrs,
                    images=images, source=fmt)
        try:
            p.check()
        except RecordError as e:
            report.skipped.append((d.where, str(e)))
            continue
        seen[d.id] = d.where
        products.append(p)
    return products


# ---------------------------------------------------------------------------------------------- files
def _read_text(path: Path) -> str:
    if not path.is_file():
        raise RecordError(f"{path}: export file not found. Fix: pass the exported file with --in.")
    raw = path.read_bytes()
    if raw[:4] == b"PK\x03\x04":
        raise RecordError(f"{path}: a ZIP/XLSX archive, not a text export. Fix: unzip it, or save the sheet as "
                          "'CSV UTF-8' and import that.")
    enc = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        text = raw.decode(enc)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise RecordError(f"{path}:{line}: not {enc.split('-sig')[0].upper()} text (byte 0x{raw[e.start]:02x} at "
                          f"offset {e.start}). Fix: export again as UTF-8, or convert it, e.g. "
                          f"`iconv -f cp1252 -t utf-8 {path.name} > fixed.csv`.") from None
    if "\x00" in text:
        raise RecordError(f"{path}: holds NUL bytes, so it is binary, not a text export. Fix: pass the CSV/TSV/XML "
                          "file the platform exported.")
    if not text.strip():
        raise RecordError(f"{path}: the export is empty. Fix: export again with at least one product.")
    return text


def _rows(path: Path, text: str, norm: Callable[[str], str], delimiter: str = ","
          ) -> tuple[list[str], list[tuple[int, dict[str, str]]], list[tuple[str, str]]]:
    """(original header, [(first line of the row, {normalized column: value})], skipped rows).
    Long HTML bodies exceed csv's 128 KiB default field limit, which is process-wide: it is raised for
    this read only and restored, so manifest and table readers keep their own limit."""
    old = csv.field_size_limit(max(csv.field_size_limit(), 64 * 2**20))
    try:
        return _read_rows(path, text, norm, delimiter)
    finally:
        csv.field_size_limit(old)


def _read_rows(path: Path, text: str, norm: Callable[[str], str], delimiter: str
               ) -> tuple[list[str], list[tuple[int, dict[str, str]]], list[tuple[str, str]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[tuple[int, dict[str, str]]] = []
    skipped: list[tuple[str, str]] = []
    header: list[str] | None = None
    keys: list[str] = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise RecordError(f"{path}:{reader.line_num}: the CSV cannot be parsed past this line ({e}). Fix: close the "
                              "open quote or remove the stray character there, then import again.") from None
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            keys = [norm(c) for c in header]
            continue
        if len(cells) > len(keys) and any(c.strip() for c in cells[len(keys):]):
            skipped.append((f"{path}:{start}", f"{len(cells)} fields where the header has {len(keys)} (an unquoted "
                            "delimiter in a value?); row skipped. Fix: quote that value."))
            continue
        row: dict[str, str] = {}
        for k, v in zip(keys, cells):
            row.setdefault(k, v.strip())
        rows.append((start, row))
    return header or [], rows, skipped


def _require(path: Path, fmt: str, header: list[str], keys: set[str], need: list[tuple[str, ...]],
             norm: Callable[[str], str]) -> None:
    """Each entry of `need` is a column (or its documented aliases); name the missing ones and the fix."""
    missing = [alts[0] for alts in need if not any(norm(a) in keys for a in alts)]
    if not missing:
        return
    guess = _guess_format(header)
    hint = f" The header looks like a {guess} export: pass --format {guess}." if guess and guess != fmt else ""
    shown = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
    raise RecordError(f"{path}: not a {fmt} export: missing column(s) {missing} (header: {shown}). Fix: export the "
                      f"products again from {fmt} with its standard columns, or pick the right --format.{hint}")


# ------------------------------------------------------------------------------------------- shopify
_SHOPIFY_ALIASES = {  # the 2024 export's names -> the classic documented ones
    "url handle": "handle", "description": "body (html)", "product image url": "image src",
    "sku": "variant sku", "price": "variant price", "variant image url": "variant image",
}


def _shopify_norm(c: str) -> str:
    c = " ".join(c.strip().lower().split())
    return _SHOPIFY_ALIASES.get(c, c)


def _shopify(path: Path, text: str, report: ImportReport) -> list[_Draft]:
    header, rows, skipped = _rows(path, text, _shopify_norm)
    _require(path, "shopify", header, set(map(_shopify_norm, header)), [("Handle", "URL handle"), ("Title",)], _shopify_norm)
    report.rows, report.skipped = len(rows) + len(skipped), skipped
    drafts: dict[str, _Draft] = {}
    option_names: dict[str, dict[int, str]] = {}
    for line, r in rows:
        handle = r.get("handle", "")
        if not handle:
            report.skipped.append((f"{path}:{line}", "blank Handle: the row belongs to no product. Fix: give it its "
                                   "product's Handle."))
            continue
        d = drafts.get(handle)
        if d is None:
            d = drafts[handle] = _Draft(id=handle, where=f"{path}:{line}")
        else:
            report.folded_rows += 1
        category = _category_path(r.get("product category")) or _plain(r.get("type")) or None
        d.fill(r.get("title"), r.get("body (html)"), category)
        d.add("vendor", r.get("vendor"))
        d.add("tags", *_split(r.get("tags")))
        names = option_names.setdefault(handle, {})
        for i in (1, 2, 3):  # the export names an option on the product's first row only
            if r.get(f"option{i} name"):
                names[i] = _plain(r[f"option{i} name"])
            value = r.get(f"option{i} value")
            if value and i in names and not (names[i] == "Title" and value == "Default Title"):
                d.add(names[i], value)
        d.add("sku", r.get("variant sku"))
        d.add("price", r.get("variant price"))
        try:
            pos = float(r.get("image position") or "inf")
        except ValueError:
            pos = float("inf")
        d.image(r.get("image src"), pos)
        d.image(r.get("variant image"))
    return list(drafts.values())


# --------------------------------------------------------------------------------------- woocommerce
def _lower(c: str) -> str:
    return " ".join(c.strip().lower().split())


def _woo_attributes(d: _Draft, r: dict[str, str]) -> None:
    n = 1
    while f"attribute {n} name" in r:
        name = r.get(f"attribute {n} name")
        if name:
            d.add(name, *_split(r.get(f"attribute {n} value(s)")))
        n += 1


def _woocommerce(path: Path, text: str, report: ImportReport) -> list[_Draft]:
    header, rows, skipped = _rows(path, text, _lower)
    _require(path, "woocommerce", header, set(map(_lower, header)), [("Name",), ("ID", "SKU"), ("Type",)], _lower)
    report.rows, report.skipped = len(rows) + len(skipped), skipped
    drafts: list[_Draft] = []
    by_ref: dict[str, _Draft] = {}
    variations: list[tuple[int, dict[str, str]]] = []
    for line, r in rows:
        types = {t.strip().lower() for t in r.get("type", "").split(",")}
        if "variation" in types:
            variations.append((line, r))
            continue
        pid = r.get("id") or r.get("sku")
        if not pid:
            report.skipped.append((f"{path}:{line}", "no ID and no SKU: the product cannot be named. Fix: fill one."))
            continue
        d = _Draft(id=pid, where=f"{path}:{line}")
        cats = [_category_path(c) for c in _split(r.get("categories"))]
        desc = "\n".join(dict.fromkeys(t for t in (html_to_text(r.get("short description", "")),
                                                   html_to_text(r.get("description", ""))) if t))
        d.fill(r.get("name"), desc, _deepest(cats))
        d.add("brand", *_split(r.get("brands")))
        d.add("tags", *_split(r.get("tags")))
        _woo_attributes(d, r)
        d.add("sku", r.get("sku"))
        d.add("price", r.get("regular price"))
        for ref in _split(r.get("images")):
            d.image(ref)
        drafts.append(d)
        for ref in (f"id:{r['id']}" if r.get("id") else "", r.get("id"), r.get("sku")):  # Parent: `id:100` or a SKU
            if ref:
                by_ref.setdefault(ref, d)
    for line, r in variations:  # after the pass above: a variation may come before its parent
        parent = (r.get("parent") or "").strip()
        d = by_ref.get(parent)
        if d is None:
            report.skipped.append((f"{path}:{line}", f"variation whose Parent {parent!r} is not in this export; row "
                                   "skipped. Fix: export the parent product with its variations."))
            continue
        report.folded_rows += 1
        _woo_attributes(d, r)
        d.add("sku", r.get("sku"))
        d.add("price", r.get("regular price"))
        for ref in _split(r.get("images")):
            d.image(ref)
    return drafts


# ------------------------------------------------------------------------------------------- magento
def _magento_pairs(s: str | None) -> dict[str, list[str]]:
    """`key=value,key=v1|v2` -> {key: [values]}; a part without `=` continues the previous value (a comma in it)."""
    out: dict[str, list[str]] = {}
    last: str | None = None
    pieces: dict[str, str] = {}
    for part in (s or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            last = k.strip()
            pieces[last] = v
        elif last is not None:
            pieces[last] += "," + part
    for k, v in pieces.items():
        vals = [_plain(x) for x in v.split("|") if _plain(x)]
        if k and vals:
            out[k] = vals
    return out


def _magento(path: Path, text: str, report: ImportReport) -> list[_Draft]:
    header, rows, skipped = _rows(path, text, _lower)
    _require(path, "magento", header, set(map(_lower, header)), [("sku",), ("name",)], _lower)
    report.rows, report.skipped = len(rows) + len(skipped), skipped
    main: dict[str, tuple[int, dict[str, str]]] = {}
    for line, r in rows:
        if r.get("store_view_code"):  # per-store-view overrides of a product given in full on its default row
            report.ignored_rows += 1
            continue
        if not r.get("sku"):
            report.skipped.append((f"{path}:{line}", "blank sku: the row belongs to no product. Fix: fill its sku."))
            continue
        if r["sku"] in main:
            report.skipped.append((f"{path}:{line}", f"sku {r['sku']!r} repeated (first at line {main[r['sku']][0]}) "
                                   "on a default row; row skipped. Fix: keep one row per sku."))
            continue
        main[r["sku"]] = (line, r)
    variations: dict[str, list[dict[str, list[str]]]] = {}
    children: set[str] = set()
    for sku, (_, r) in main.items():
        if r.get("configurable_variations"):
            vs = [_magento_pairs(v) for v in r["configurable_variations"].split("|") if v.strip()]
            # `|` separates variations; a multi-value pair inside one is not part of this documented layout
            variations[sku] = vs
            children.update(v["sku"][0] for v in vs if v.get("sku") and v["sku"][0] != sku)
    drafts: list[_Draft] = []

    def add_media_and_price(d: _Draft, r: dict[str, str]) -> None:
        d.image(r.get("base_image"))
        for ref in _split(r.get("additional_images")):
            d.image(ref)
        d.add("sku", r.get("sku"))
        d.add("price", r.get("price"))

    for sku, (line, r) in main.items():
        if sku in children:
            continue
        d = _Draft(id=sku, where=f"{path}:{line}")
        cats = [_category_path(c, "/", drop_root=True) for c in _split(r.get("categories"))]
        desc = "\n".join(dict.fromkeys(t for t in (html_to_text(r.get("short_description", "")),
                                                   html_to_text(r.get("description", ""))) if t))
        d.fill(r.get("name"), desc, _deepest(cats))
        for k, vals in _magento_pairs(r.get("additional_attributes")).items():
            d.add(k, *vals)
        add_media_and_price(d, r)
        for v in variations.get(sku, []):
            child = v.get("sku", [""])[0]
            for k, vals in v.items():
                if k != "sku":
                    d.add(k, *vals)
            if child in main and child != sku:
                report.folded_rows += 1
                add_media_and_price(d, main[child][1])
        drafts.append(d)
    return drafts


# ----------------------------------------------------------------------------------- google merchant
_MERCHANT_ATTRS = ("brand", "color", "size", "material", "pattern", "gender", "age_group", "price")


def _merchant_norm(c: str) -> str:
    c = c.strip().lower()
    c = c[2:] if c.startswith("g:") else c
    return "_".join(c.split())


def _merchant_xml(path: Path, text: str) -> list[tuple[int, dict[str, list[str]]]]:
    # the text is already decoded: a declared encoding other than UTF-8 would decode it a second time
    text = re.sub(r"^(\s*<\?xml[^>]*?)\s+encoding=[\"'][^\"']*[\"']", r"\1", text.lstrip("\ufeff"))
    try:
        root = ET.fromstring(text.lstrip().encode())
    except ET.ParseError as e:
        line = e.position[0] if getattr(e, "position", None) else "?"
        raise RecordError(f"{path}:{line}: not well-formed XML ({e}). Fix: correct the feed there, or export it "
                          "again.") from None
    items = [el for el in root.iter() if el.tag in ("item", f"{{{ATOM_NS}}}entry", "entry")]
    if not items:
        raise RecordError(f"{path}: an XML file with no <item> (RSS 2.0) or <entry> (Atom) elements, so not a "
                          "Merchant Center feed. Fix: pass the product feed, or pick the right --format.")
    out = []
    for n, el in enumerate(items, start=1):
        fields: dict[str, list[str]] = {}
        for child in el:
            ns, _, local = child.tag.rpartition("}")
            if ns and ns.lstrip("{") not in (G_NS, ATOM_NS):
                continue
            value = (child.text or "").strip() or child.attrib.get("href", "").strip()
            if value:
                # a g: field wins over the plain RSS <title>/<description> of the same name
                fields.setdefault(local, [])
                if ns.lstrip("{") == G_NS:
                    fields[local].insert(0, value)
                else:
                    fields[local].append(value)
        out.append((n, fields))
    return out


def _merchant(path: Path, text: str, report: ImportReport) -> list[_Draft]:
    if text.lstrip("\ufeff").lstrip().startswith("<"):
        items = _merchant_xml(path, text)
        keys = {k for _, f in items for k in f}
        _require(path, "google-merchant", sorted(keys), keys, [("id",), ("title",)], _merchant_norm)
        where = lambda n: f"{path}: item {n}"  # noqa: E731
        report.rows = len(items)
    else:
        first = text.lstrip("\ufeff").splitlines()[0]
        header, rows, skipped = _rows(path, text, _merchant_norm, "\t" if "\t" in first else ",")
        _require(path, "google-merchant", header, set(map(_merchant_norm, header)), [("id",), ("title",)], _merchant_norm)
        items = [(line, {k: [v] for k, v in r.items() if v}) for line, r in rows]
        for _, f in items:  # the TSV form lists several additional images in one cell
            if "additional_image_link" in f:
                f["additional_image_link"] = _split(f["additional_image_link"][0])
        where = lambda n: f"{path}:{n}"  # noqa: E731
        report.rows, report.skipped = len(rows) + len(skipped), skipped
    drafts: dict[str, _Draft] = {}
    for n, f in items:
        get = lambda k: f.get(k, [""])[0]  # noqa: E731
        item_id = get("id")
        if not item_id:
            report.skipped.append((where(n), "no id: the item cannot be named. Fix: give every item an id."))
            continue
        key = get("item_group_id") or item_id
        d = drafts.get(key)
        if d is None:
            d = drafts[key] = _Draft(id=key, where=where(n))
        else:
            report.folded_rows += 1
        category = _category_path(get("product_type").split(",")[0]) or _category_path(get("google_product_category"))
        d.fill(get("title"), get("description"), category)
        for k in _MERCHANT_ATTRS:
            d.add(k, *f.get(k, []))
        if key != item_id:
            d.add("sku", item_id)
        d.image(get("image_link"), float(len(d.images)))
        for ref in f.get("additional_image_link", []):
            d.image(ref)
    return list(drafts.values())


# ------------------------------------------------------------------------------------------ dispatch
_READERS = {"shopify": _shopify, "woocommerce": _woocommerce, "magento": _magento, "google-merchant": _merchant}
_SIGNATURES = {  # columns only that format has, to name the right --format in an error
    "shopify": {"handle", "url handle", "body (html)", "variant sku"},
    "woocommerce": {"attribute 1 value(s)", "short description", "regular price"},
    "magento": {"additional_attributes", "configurable_variations", "product_type", "base_image"},
    "google-merchant": {"image_link", "item_group_id", "google_product_category", "g:id"},
}


def _guess_format(header: list[str]) -> str | None:
    cols = {" ".join(c.strip().lower().split()) for c in header}
    cols |= {_merchant_norm(c) for c in header}
    best = max(_SIGNATURES, key=lambda f: len(_SIGNATURES[f] & cols))
    return best if _SIGNATURES[best] & cols else None


def read_export(path: str | Path, fmt: str, media: MediaResolver) -> tuple[list[Product], ImportReport]:
    """Read one export into products (images resolved through `media`) and the report of what was left out."""
    if fmt not in _READERS:
        raise RecordError(f"unknown import format {fmt!r}. Fix: use one of {', '.join(FORMATS)}.")
    path = Path(path)
    report = ImportReport(format=fmt, source=str(path))
    drafts = _READERS[fmt](path, _read_text(path), report)
    products = _finish(drafts, fmt, media, report)
    report.products = len(products)
    return products, report


def import_export(path: str | Path, fmt: str, out: str | Path, media_root: str | Path | None = None,
                  fetch: bool = True, timeout: float = 5.0) -> ImportReport:
    """Import an export into `out` (manifest.jsonl); misses and skipped rows go to `<out>.misses.txt` / `.skipped.txt`.

    URLs are cached in `<out folder>/media-cache/`, named by a hash of the URL and the file's extension.
    """
    path, out = Path(path), Path(out)
    if out.exists() and path.exists() and out.resolve() == path.resolve():
        raise RecordError(f"{out}: --out is the export itself. Fix: write the manifest to another file.")
    media = MediaResolver(path.parent, out.parent / "media-cache", Path(media_root) if media_root else None,
                          fetch=fetch, timeout=timeout)
    products, report = read_export(path, fmt, media)
    if not products:
        first = "; ".join(f"{w}: {r}" for w, r in report.skipped[:3]) or "the export has no product rows"
        raise RecordError(f"{path}: no product could be imported ({first}). Fix: check the export and the --format.")
    tmp = out.with_name(out.name + ".part")
    write_manifest(products, tmp)
    os.replace(tmp, out)  # an earlier manifest stays whole until the new one is complete
    report.out = str(out)
    for suffix, lines in ((".misses.txt", [f"{p}\t{ref}\t{why}" for p, ref, why in report.misses]),
                          (".skipped.txt", [f"{w}\t{why}" for w, why in report.skipped])):
        listing = out.with_name(out.name + suffix)
        if lines:
            listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif listing.exists():
            listing.unlink()  # a list from an earlier run would describe another import
    return report


def print_report(r: ImportReport, stream=sys.stdout) -> None:
    m = r.media
    print(f"{r.source} ({r.format}): {r.products} products from {r.rows} rows ({r.folded_rows} variant/image rows "
          f"folded, {r.ignored_rows} store-view rows ignored) -> {r.out}", file=stream)
    print(f"media: {m.get('local', 0)} local, {m.get('media_root', 0)} via --media-root, {m.get('fetched', 0)} fetched, "
          f"{m.get('cached', 0)} from the cache; {len(r.misses)} missed", file=stream)
    for label, items, suffix in (("skipped", [f"{w}: {why}" for w, why in r.skipped], ".skipped.txt"),
                                 ("missed", [f"{p}: {ref}: {why}" for p, ref, why in r.misses], ".misses.txt")):
        if items:
            print(f"{label} {len(items)} (all listed in {r.out}{suffix}):", file=stream)
            for line in items[:10]:
                print(f"  {line}", file=stream)
            if len(items) > 10:
                print(f"  ... {len(items) - 10} more", file=stream)


def main(argv: list[str] | None = None) -> int:
    """`python -m core.data.records import --format F --in FILE --out manifest.jsonl [--media-root DIR]`."""
    ap = argparse.ArgumentParser(prog="python -m core.data.records import",
                                 description="Import a shop-platform product export into a shop3k manifest.jsonl.")
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--in", dest="src", required=True, help="the exported CSV/TSV/XML file")
    ap.add_argument("--out", required=True, help="the manifest.jsonl to write")
    ap.add_argument("--media-root", default=None, help="folder where images are found by file name")
    ap.add_argument("--no-fetch", action="store_true", help="never download image URLs (they become misses)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per URL fetch (default 5)")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args(argv)
    try:
        report = import_export(args.src, args.format, args.out, args.media_root, not args.no_fetch, args.timeout)
    except ScaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # writing the manifest: an earlier one stays whole (it is replaced only when complete)
        print(f"error: {write_problem(e.filename or args.out, e)}. Fix: free disk space, then run the import again.",
              file=sys.stderr)
        return 2
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
    return 0

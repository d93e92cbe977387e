"""The five modalities, named once, in the order used everywhere (SCALE.md section 1).

One row per modality: its name, its letter in presence patterns ('TBI--'), its masked pretext task
(SCALE.md section 3), whether its tokens are vocabulary ids or feature vectors, and the key of its tokens
in a product's features dict (the layout core.data.dataset documents). Everything else is derived.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping


@dataclass(frozen=True)
class Modality:
    name: str  # "text"
    letter: str  # "T" in presence patterns
    task: str  # masked pretext task: "mlm"
    kind: Literal["ids", "features"]  # vocabulary ids (text, table) or feature vectors (image, video, audio)
    key: str  # its tokens in a features dict: "text.ids"


SPECS: tuple[Modality, ...] = (
    Modality("text", "T", "mlm", "ids", "text.ids"),
    Modality("table", "B", "mem", "ids", "table.ids"),
    Modality("image", "I", "mrp", "features", "image.tokens"),
    Modality("video", "V", "mfp", "features", "video.frames"),
    Modality("audio", "A", "mam", "features", "audio.patches"),
)
SPEC: dict[str, Modality] = {s.name: s for s in SPECS}

MODALITIES: tuple[str, ...] = tuple(s.name for s in SPECS)
INDEX: dict[str, int] = {m: i for i, m in enumerate(MODALITIES)}
LETTERS: dict[str, str] = {s.name: s.letter for s in SPECS}
PRETEXT: dict[str, str] = {s.name: s.task for s in SPECS}
FEATURE_KEY: dict[str, str] = {s.name: s.key for s in SPECS}
TOKEN_MODALITIES: tuple[str, ...] = tuple(s.name for s in SPECS if s.kind == "ids")
FEATURE_MODALITIES: tuple[str, ...] = tuple(s.name for s in SPECS if s.kind == "features")


def present_in(feats: Mapping) -> list[bool]:
    """Which modalities a features dict holds, in MODALITIES order: the one test of presence."""
    return [s.key in feats for s in SPECS]


def present_names(feats: Mapping) -> list[str]:
    """Names of the modalities a features dict holds, in MODALITIES order."""
    return [s.name for s in SPECS if s.key in feats]


def pattern(present: "list[bool] | tuple[bool, ...]") -> str:
    """Present-modality pattern such as 'TBI--' (T text, B table, I image, V video, A audio)."""
    return "".join(LETTERS[m] if p else "-" for m, p in zip(MODALITIES, present))

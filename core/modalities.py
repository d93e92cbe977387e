"""The five modalities, named once, in the order used everywhere (SCALE.md section 1)."""
from __future__ import annotations

MODALITIES: tuple[str, ...] = ("text", "table", "image", "video", "audio")
INDEX: dict[str, int] = {m: i for i, m in enumerate(MODALITIES)}
LETTERS: dict[str, str] = {"text": "T", "table": "B", "image": "I", "video": "V", "audio": "A"}
# Masked pretext task of each modality (SCALE.md section 3).
PRETEXT: dict[str, str] = {"text": "mlm", "table": "mem", "image": "mrp", "video": "mfp", "audio": "mam"}
# Modalities whose tokens are vocabulary ids; the others are feature vectors.
TOKEN_MODALITIES: tuple[str, ...] = ("text", "table")
FEATURE_MODALITIES: tuple[str, ...] = ("image", "video", "audio")


def pattern(present: "list[bool] | tuple[bool, ...]") -> str:
    """Present-modality pattern such as 'TBI--' (T text, B table, I image, V video, A audio)."""
    return "".join(LETTERS[m] if p else "-" for m, p in zip(MODALITIES, present))

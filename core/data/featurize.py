"""Product -> decoded media -> backbone features (one product's features, as `core.data.dataset` documents).

`Featurizer.decode` opens the files (any broken file becomes a `MediaError` for that modality only),
keeping only bounded, small arrays (images and video frames downscaled, text capped), so a decoded
product held in the app's session costs a few MiB whatever was uploaded. `Featurizer.encode` runs
the frozen backbones. `Featurizer.encode_many` batches the CNN over many products, which is what the
feature cache uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .backbones import (MAX_TEXT_CHARS, BackboneConfig, ImageBackbone, clean_text, load_tokenizer,
                        tokenize_table, tokenize_text)
from ..errors import MediaError
from .media import (FRAME_LONG_SIDE, FRAME_SHORT_SIDE, IMAGE_LONG_SIDE, IMAGE_SHORT_SIDE, VideoClip, has_soundtrack,
                    load_audio, load_image, load_soundtrack, load_video, parse_table)
from .records import Product
from .speech import audio_frontend


@dataclass
class Decoded:
    """What was read from a product's files. Absent or broken modalities are None."""

    product: Product
    text: str | None = None
    table: dict | None = None
    images: list[np.ndarray] = field(default_factory=list)
    video: VideoClip | None = None
    audio: np.ndarray | None = None  # 16 kHz mono
    audio_source: str | None = None  # "file" or "video"
    errors: dict[str, str] = field(default_factory=dict)  # modality -> message
    notes: dict[str, str] = field(default_factory=dict)  # modality -> what was changed on the way (text cut ...)

    def present(self) -> dict[str, bool]:
        return {"text": bool(self.text), "table": bool(self.table), "image": bool(self.images),
                "video": self.video is not None, "audio": self.audio is not None}


class Featurizer:
    """Frozen backbones plus the tokenizer. Heavy: build once, reuse."""

    def __init__(self, cfg: BackboneConfig = BackboneConfig(), device: str = "auto",
                 audio_from_video: bool = True) -> None:
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.text)
        self.image = ImageBackbone(cfg.image, cfg.image_size, device)
        self.audio = audio_frontend(cfg, str(self.image.device_))  # logmel patches or Whisper items
        self.audio_from_video = audio_from_video

    # ---------------------------------------------------------------- decode
    def decode(self, product: Product, max_images: int = 8, visual: bool = True,
               video_ok: bool = False) -> Decoded:
        """visual=False skips images and video (a cache reusing their features): the soundtrack fallback then
        trusts `video_ok`, whether the video decoded when those features were made."""
        d = Decoded(product=product, text=self._text(product))
        if d.text and len(product.text) > MAX_TEXT_CHARS:
            d.notes["text"] = (f"{product.id}: title + description are {len(product.text):,} characters; only the first "
                               f"{MAX_TEXT_CHARS:,} are kept (the model reads at most {self.cfg.max_text_tokens} tokens).")
        if product.attributes:
            try:
                d.table = parse_table(product.attributes, f"{product.id} attributes")
            except MediaError as e:
                d.errors["table"] = str(e)
        # the backbone center-crops image_size px from the short side; more is kept only for display
        image_side = max(IMAGE_SHORT_SIDE, self.cfg.image_size)
        for path in product.images[:max_images] if visual else ():
            try:
                d.images.append(load_image(path, image_side, max(IMAGE_LONG_SIDE, image_side)))
            except MediaError as e:
                d.errors.setdefault("image", str(e))
        if product.video and visual:
            try:
                frame_side = max(FRAME_SHORT_SIDE, self.cfg.image_size)
                d.video = load_video(product.video, short_side=frame_side, long_side=max(FRAME_LONG_SIDE, frame_side))
            except MediaError as e:
                d.errors["video"] = str(e)
        if product.audio:
            try:
                d.audio, d.audio_source = load_audio(product.audio), "file"
            except MediaError as e:
                d.errors["audio"] = str(e)
        video_ok = d.video is not None if visual else video_ok
        if d.audio is None and self.audio_from_video and video_ok and has_soundtrack(product.video):
            try:
                d.audio, d.audio_source = load_soundtrack(product.video), "video"
            except MediaError as e:
                d.errors.setdefault("audio", str(e))
            else:
                if "audio" in d.errors:  # the audio file's error stays, and the fallback is said
                    d.errors["audio"] += f" The soundtrack of the video {product.video} is used as the audio instead."
                    d.notes["audio"] = f"{product.id}: the audio file could not be used; the video's soundtrack is the audio."
        return d

    @staticmethod
    def _text(product: Product) -> str | None:
        """Title + description, capped at MAX_TEXT_CHARS and cleaned of lone surrogates."""
        return clean_text(product.text[:MAX_TEXT_CHARS]) or None

    # ---------------------------------------------------------------- encode
    def encode(self, decoded: Decoded) -> dict[str, np.ndarray]:
        return self.encode_many([decoded])[0]

    def encode_many(self, items: Sequence[Decoded]) -> list[dict[str, np.ndarray]]:
        """Features of each decoded product; images and video frames of all products go through the CNN together."""
        cfg = self.cfg
        out: list[dict[str, np.ndarray]] = [{} for _ in items]
        stills = [(i, d.images[0]) for i, d in enumerate(items) if d.images]
        frames = [(i, f) for i, d in enumerate(items) if d.video is not None for f in d.video.frames]
        if stills:
            tokens, boxes = self.image.regions([im for _, im in stills])
            for (i, _), t in zip(stills, tokens):
                out[i]["image.tokens"] = t.astype(np.float16)
                out[i]["image.boxes"] = boxes
        if frames:
            pooled = self.image.pooled([f for _, f in frames])
            owner = np.array([i for i, _ in frames])
            for i in set(owner.tolist()):
                out[i]["video.frames"] = pooled[owner == i].astype(np.float16)
        for i, d in enumerate(items):
            if d.text:  # tokenize_text caps and cleans the title and description again
                out[i]["text.ids"] = tokenize_text(self.tokenizer, d.product.title or d.text,
                                                   d.product.description if d.product.title else "", cfg.max_text_tokens)
            if d.table:
                ids, spans = tokenize_table(self.tokenizer, d.table, cfg.max_table_tokens)
                if len(spans):
                    out[i]["table.ids"], out[i]["table.spans"] = ids, spans
            if d.audio is not None:
                out[i]["audio.patches"] = self.audio.patches(d.audio).astype(np.float16)
        return out

    def __call__(self, product: Product) -> tuple[dict[str, np.ndarray], Decoded]:
        d = self.decode(product)
        return self.encode(d), d


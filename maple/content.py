"""Content ids: equal texts, or images stored alike (equal mode, size and pixels), get equal ids, in every process. The
trainer embeds each distinct item of a batch once and de-duplicates negatives by them; the evaluation counts an image
listed twice as one. One picture stored in two modes (RGB and an opaque RGBA, L and RGB) gets two ids: it is embedded
twice, and counted as two images."""

from __future__ import annotations

import xxhash
from PIL import Image

from modeling_maple.processing_maple import exif_turn


def content_id(item: str | Image.Image) -> int:
    """A stable 64-bit id of a text or an image's pixels (with its palette, its transparency and the EXIF turn loading
    applies): equal content, equal id, in every process (unlike `hash()`, which is salted per process). xxh3: a
    collated batch hashes every image's pixels, and blake2b took as long as decoding a JPEG."""
    digest = xxhash.xxh3_64()
    if isinstance(item, str):
        digest.update(b"text:" + item.encode("utf-8"))
    elif isinstance(item, Image.Image):
        digest.update(f"image:{item.mode}:{item.size}:".encode())
        digest.update(item.tobytes())
        if item.mode in ("P", "PA"):  # the bytes are palette indices: a recoloured copy differs only in its palette
            digest.update(bytes(item.getpalette() or []) + repr(item.info.get("transparency")).encode())
        elif (transparency := item.info.get("transparency")) is not None:  # a colour key loading makes transparent
            digest.update(b"transparency:" + repr(transparency).encode())
        if (turn := exif_turn(item)) is not None:  # loading turns the picture upright
            digest.update(f"orientation:{turn}".encode())
    else:
        raise TypeError(f"content_id takes a text (str) or a PIL image, got {type(item).__name__}")
    return int.from_bytes(digest.digest(), "little", signed=True)

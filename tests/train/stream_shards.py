"""Small image-caption WebDataset shards for the streaming tests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "grey": (128, 128, 128)}


def write_shards(folder: Path, shards: int = 6, per_shard: int = 10) -> str:
    """Image-caption shards: a coloured square and 'a <colour> square', as TarWriter lays them out."""
    names = list(COLOURS)
    for s in range(shards):
        with tarfile.open(folder / f"part-{s}.tar", "w") as tar:
            for i in range(per_shard):
                n = s * per_shard + i
                colour = names[n % len(names)]
                image = io.BytesIO()
                Image.new("RGB", (12, 12), COLOURS[colour]).save(image, format="JPEG")
                for name, data in (
                    (f"k{n:04d}.jpg", image.getvalue()),
                    (f"k{n:04d}.txt", f"a {colour} square".encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"part-{{0..{shards - 1}}}.tar")


def streamed_spec(urls: str) -> str:
    """The ``data.train`` override that streams ``urls`` (image <- jpg, text <- txt)."""
    spec = {"shards": urls, "keys": {"image": "jpg", "text": "txt"}, "stream": True, "shuffle_buffer": 8}
    return f"data.train={json.dumps(spec)}"

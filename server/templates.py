"""The shipped workflows (``workflows/*.json``) as templates, in the shape of the official ComfyUI frontend's
``/templates/index.json``: one category per model family, each template with a title, a description and a
thumbnail drawn from the workflow's layout. Our canvas's template browser reads the same index.

A workflow's family is its ``extra.family`` field when it has one, else the first word of its file name
(``sdxl_base.json`` → ``SDXL``), so the workflows of a new family appear grouped as soon as they are added.
"""
from __future__ import annotations

import io
import json
import re
from functools import lru_cache
from pathlib import Path

CATEGORY = "latentgraph"  # marks our categories in an index that may also hold the template package's
THUMB_SIZE = (400, 300)
THUMB_SUFFIX = "-1.webp"  # the frontend asks for /templates/<name>-1.<mediaSubtype>
NOTE_TYPES = ("Note", "MarkdownNote")
OUTPUT_TYPES = ("SaveImage", "PreviewImage")


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("nodes"), list) else None


def family(name: str, workflow: dict) -> str:
    extra = workflow.get("extra")
    given = extra.get("family") if isinstance(extra, dict) else None
    if isinstance(given, str) and given.strip():
        return given.strip()
    word = name.split("_")[0]
    return word.upper() if len(word) <= 5 else word.capitalize()


def title(name: str, fam: str) -> str:
    words = name.split("_")
    if words[0].lower() == fam.lower():
        words[0] = fam
    else:
        words[0] = words[0].capitalize()
    return " ".join(words)


def description(workflow: dict, limit: int = 240) -> str:
    """The first paragraph of the workflow's first note, cut at a sentence end near ``limit``."""
    for node in workflow["nodes"]:
        if isinstance(node, dict) and node.get("type") in NOTE_TYPES and node.get("widgets_values"):
            text = str(node["widgets_values"][0]).strip().split("\n")[0]
            if len(text) <= limit:
                return text
            cut = text.rfind(". ", 0, limit)
            return text[: cut + 1] if cut > 0 else text[: limit - 1] + "…"
    return ""


def index(workflows_dir: Path) -> list[dict]:
    """Categories (families, in the order of their first file name) of template entries."""
    families: dict[str, list[dict]] = {}
    for path in sorted(Path(workflows_dir).glob("*.json")):
        workflow = _read(path)
        if workflow is None:
            continue
        fam = family(path.stem, workflow)
        families.setdefault(fam, []).append({
            "name": path.stem, "title": title(path.stem, fam), "description": description(workflow),
            "mediaType": "image", "mediaSubtype": "webp", "tags": [fam], "models": [fam]})
    return [{"moduleName": "default", "category": CATEGORY, "title": fam, "type": "image", "templates": entries}
            for fam, entries in families.items()]


def find(workflows_dir: Path, name: str) -> tuple[str, Path] | None:
    """("json" | "thumbnail", workflow path) for a template file name of ours, else None."""
    for kind, suffix in (("json", ".json"), ("thumbnail", THUMB_SUFFIX)):
        stem = name[: -len(suffix)] if name.endswith(suffix) else None
        if stem and re.fullmatch(r"[\w.-]+", stem) and (Path(workflows_dir) / f"{stem}.json").is_file():
            return kind, Path(workflows_dir) / f"{stem}.json"
    return None


def thumbnail(path: Path) -> bytes:
    """The workflow's layout, drawn small (nodes, links; output nodes with a blue title), as WebP."""
    return _thumbnail(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _thumbnail(path: Path, mtime_ns: int) -> bytes:
    from PIL import Image, ImageDraw

    workflow = _read(path) or {"nodes": []}
    nodes = [n for n in workflow["nodes"] if isinstance(n, dict) and _box(n)]
    img = Image.new("RGB", THUMB_SIZE, (30, 31, 34))
    if nodes:
        boxes = {str(n["id"]): _box(n) for n in nodes}
        x0 = min(b[0] for b in boxes.values()) - 30
        y0 = min(b[1] for b in boxes.values()) - 30
        x1 = max(b[2] for b in boxes.values()) + 30
        y1 = max(b[3] for b in boxes.values()) + 30
        s = min(THUMB_SIZE[0] / (x1 - x0), THUMB_SIZE[1] / (y1 - y0))
        ox, oy = (THUMB_SIZE[0] - (x1 - x0) * s) / 2, (THUMB_SIZE[1] - (y1 - y0) * s) / 2

        def at(x, y):
            return ox + (x - x0) * s, oy + (y - y0) * s

        draw = ImageDraw.Draw(img)
        for link in workflow.get("links") or []:
            if isinstance(link, list) and len(link) >= 5 and str(link[1]) in boxes and str(link[3]) in boxes:
                a, b = boxes[str(link[1])], boxes[str(link[3])]
                start, end = at(a[2], a[1] + 14 + 20 * link[2]), at(b[0], b[1] + 14 + 20 * link[4])
                draw.line([start, ((start[0] + end[0]) / 2, start[1]), ((start[0] + end[0]) / 2, end[1]), end],
                          fill=(120, 150, 125), width=max(1, round(3 * s)), joint="curve")
        for node in nodes:
            bx0, by0, bx1, by1 = _box(node)
            output = node.get("type") in OUTPUT_TYPES
            draw.rounded_rectangle([at(bx0, by0 - 30), at(bx1, by1)], radius=max(1, round(8 * s)),
                                   fill=_colour(node.get("bgcolor"), (50, 51, 56)), outline=(96, 98, 106))
            title = (79, 140, 255) if output else _colour(node.get("color"), (78, 80, 88))
            draw.rectangle([at(bx0 + 1, by0 - 29), at(bx1 - 1, by0)], fill=title)
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=85)
    return buf.getvalue()


def _box(node: dict) -> tuple[float, float, float, float] | None:
    pos, size = node.get("pos"), node.get("size")
    if isinstance(pos, dict):  # some files store {"0": x, "1": y}
        pos = [pos.get("0"), pos.get("1")]
    if isinstance(size, dict):
        size = [size.get("0"), size.get("1")]
    try:
        x, y, w, h = float(pos[0]), float(pos[1]), float(size[0]), float(size[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    return x, y, x + w, y + h


def _colour(value, default: tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(value, str) and re.fullmatch(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}", value):
        h = value[1:]
        h = "".join(c * 2 for c in h) if len(h) == 3 else h
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    return default

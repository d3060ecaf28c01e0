"""A per-stage time plot (stacked horizontal bars, one per row) drawn with Pillow, so the report
needs no plotting library and the PNG is reproducible from the JSON."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7"]


def stage_bars(rows: list[dict], stages: list[str], path: Path, title: str) -> Path:
    """rows: [{"name": str, stage: seconds, ...}] → PNG at ``path``."""
    w, bar_h, left, top = 900, 34, 170, 60
    h = top + len(rows) * (bar_h + 18) + 70
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((10, 12), title, fill="black", font=font)
    total = max(sum(float(r.get(s) or 0.0) for s in stages) for r in rows) or 1.0
    scale = (w - left - 90) / total
    for i, r in enumerate(rows):
        y = top + i * (bar_h + 18)
        d.text((10, y + bar_h // 3), str(r["name"])[:24], fill="black", font=font)
        x = left
        for j, s in enumerate(stages):
            v = float(r.get(s) or 0.0) * scale
            if v > 0:
                d.rectangle([x, y, x + v, y + bar_h], fill=PALETTE[j % len(PALETTE)])
                x += v
        secs = sum(float(r.get(s) or 0.0) for s in stages)
        d.text((x + 6, y + bar_h // 3), f"{secs:.1f} s", fill="black", font=font)
    ly = h - 40
    lx = left
    for j, s in enumerate(stages):
        d.rectangle([lx, ly, lx + 12, ly + 12], fill=PALETTE[j % len(PALETTE)])
        d.text((lx + 16, ly), s, fill="black", font=font)
        lx += 20 + int(d.textlength(s, font=font)) + 14
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=False)
    return path

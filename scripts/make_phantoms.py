"""Writes the chest-X-ray demo set: procedural radiograph-like phantoms (our own work, no patient
data) with IU X-Ray-style reports. Run from the repository root to regenerate:

    python scripts/make_phantoms.py

Each phantom is a frontal chest projection drawn from ellipses and arcs (body, lungs, mediastinum,
heart, spine, clavicles, ribs, diaphragm) with the case's abnormality painted in, blurred and
with film grain. Deterministic (fixed seeds).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

N = 128
DEMO = Path(__file__).resolve().parents[1] / "engine" / "demo_xray"

CASES = [  # (file, labels, impression, findings, abnormality)
    ("normal_1.png", ["normal"], "No acute cardiopulmonary abnormality.",
     "The heart size and mediastinal contours are within normal limits. The lungs are clear. No pleural effusion "
     "or pneumothorax. XXXX are intact.", None),
    ("effusion_left.png", ["Pleural Effusion"], "Small left pleural effusion.",
     'Blunting of the left costophrenic angle consistent with a small left pleural effusion. Heart size is normal. '
     'The right lung is clear. "No pneumothorax."', "effusion_left"),
    ("cardiomegaly.png", ["Cardiomegaly"], "Cardiomegaly without acute pulmonary disease.",
     "The cardiac silhouette is enlarged. Pulmonary vascularity is within normal limits. No focal consolidation, "
     "pleural effusion or pneumothorax. Comparison XXXX XXXX.", "cardiomegaly"),
    ("opacity_right.png", ["Lung Opacity", "Pneumonia"], "Right lower lobe opacity, likely pneumonia.",
     "Patchy airspace opacity in the right lower lobe. The left lung is clear. Heart size normal. No pleural "
     "effusion. Follow-up radiograph after treatment recommended.", "opacity_right"),
    ("pneumothorax_right.png", ["Pneumothorax"], "Small right apical pneumothorax.",
     "A thin pleural line is seen at the right apex with absent lung markings peripherally, consistent with a "
     "small pneumothorax. No mediastinal shift. Dr. XXXX was notified at XXXX.", "pneumothorax_right"),
    ("nodule_left.png", ["Lung Lesion"], "Left upper lobe nodule. CT recommended.",
     "A 1 cm rounded nodule projects over the left upper lobe. Otherwise the lungs are clear. Cardiomediastinal "
     "silhouette is normal. No effusion.", "nodule_left"),
    ("normal_2.png", ["normal"], "Normal chest.",
     "Clear lungs bilaterally. Normal heart size. No pleural effusion or pneumothorax. Visualized osseous "
     "structures are unremarkable.", None),
    ("effusion_bilateral.png", ["Pleural Effusion", "Edema"], "Bilateral pleural effusions with mild edema.",
     'Small bilateral pleural effusions with blunting of both costophrenic angles. Mild interstitial "edema". '
     "Heart size upper normal. XXXX sternotomy wires.", "effusion_bilateral"),
]


def _ellipse(cx, cy, rx, ry):
    y, x = np.mgrid[0:N, 0:N] / N
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def phantom(kind: str | None, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = np.full((N, N), 0.08)
    img[_ellipse(0.5, 0.58, 0.47, 0.55)] = 0.55  # soft tissue of the thorax
    heart_rx = 0.2 if kind == "cardiomegaly" else 0.14
    for side in (-1, 1):  # lungs: dark, air-filled
        img[_ellipse(0.5 + side * 0.19, 0.48, 0.15, 0.3)] = 0.18
    img[_ellipse(0.5, 0.33, 0.06, 0.25)] = 0.62  # mediastinum
    img[_ellipse(0.54, 0.66, heart_rx, 0.13)] = 0.7  # heart, to the patient's left (image right)
    img[:, int(0.47 * N):int(0.53 * N)] = np.maximum(img[:, int(0.47 * N):int(0.53 * N)], 0.75)  # spine
    y, x = np.mgrid[0:N, 0:N] / N
    for k in range(7):  # ribs: bright arcs over the lungs
        arc = np.abs(y - (0.22 + 0.075 * k) - 0.12 * (x - 0.5) ** 2 * 4) < 0.008
        img[arc & (img > 0.1) & (img < 0.4)] += 0.18  # over the lungs only
    for side in (-1, 1):  # clavicles
        clavicle = (np.abs(y - 0.17 - 0.15 * np.abs(x - 0.5)) < 0.01) & (np.abs(x - 0.5) < 0.3)
        img[clavicle & (img > 0.1)] = 0.8
        # diaphragm domes: below them everything is soft tissue
        img[(y > 0.74 - 0.3 * ((x - 0.5 - side * 0.19) ** 2) * 0) & (np.abs(x - 0.5 - side * 0.19) < 0.16)
            & (y > 0.72 + 2.0 * (x - 0.5 - side * 0.19) ** 2)] = 0.6
    if kind in ("effusion_left", "effusion_bilateral"):
        img[_ellipse(0.69, 0.74, 0.14, 0.09)] = 0.6  # patient's left = image right
    if kind in ("effusion_bilateral",):
        img[_ellipse(0.31, 0.74, 0.14, 0.08)] = 0.6
        img += 0.05 * rng.random((N, N)) * (img < 0.3)
    if kind == "opacity_right":
        blob = np.exp(-(((x - 0.29) / 0.07) ** 2 + ((y - 0.6) / 0.06) ** 2))
        img += 0.35 * blob
    if kind == "nodule_left":
        img[_ellipse(0.68, 0.34, 0.025, 0.025)] = 0.7
    if kind == "pneumothorax_right":
        img[_ellipse(0.3, 0.3, 0.1, 0.1) & (x < 0.24)] = 0.05
    a = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(1.6))
    g = np.asarray(a, dtype=np.float64) + rng.normal(0, 4, (N, N))
    return Image.fromarray(np.clip(g, 0, 255).astype(np.uint8), "L")


def main() -> None:
    meta = []
    for i, (name, labels, impression, findings, kind) in enumerate(CASES):
        phantom(kind, i).save(DEMO / "images" / name, optimize=True)
        meta.append({"file_name": f"images/{name}", "labels": labels, "captions": [impression, findings]})
    (DEMO / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()

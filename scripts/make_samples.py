#!/usr/bin/env python
"""Builds the bundled samples in datasets/*/sample/ from the shared real-face data (run once; committed).

    python scripts/make_samples.py [--shared ../shared/data] [--celeba-n 600] [--people 24] [--photos 6]

- datasets/celeba/sample/: N CelebA images with official attributes, balanced Female/Male, in the
  official layout (img_align_celeba/, list_attr_celeba.txt, identity_CelebA.txt).
- datasets/students/sample/: a folder per person (CelebA identities not in the CelebA sample, under
  invented names with spaces and accents), photos saved in the formats students' phones and laptops
  produce (JPG, .JPG, .jpeg, PNG, WEBP, HEIC).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tf_models.data.celeba import read_attribute_file

REPO = Path(__file__).resolve().parents[1]

# Invented names (the photos are CelebA identities; these are not their names).
NAMES = [
    "Ana María López", "José Álvarez", "Zoë Müller", "Nguyễn Thị Lan", "Søren Kierkegård", "Łukasz Nowak",
    "Chloé Dubois", "Ömer Yılmaz", "Jürgen Weiß", "Inés Peña", "François Lefèvre", "Mia Chen",
    "Raúl Ortega", "Aiyana Begay", "Björn Ödegaard", "Siobhán Ní Bhriain", "Tomás Ruiz", "Élodie Martin",
    "Kofi Mensah", "Ayşe Demir", "Hana Novák", "Mateus Gonçalves", "Priya Raman", "Dario Šimić",
    "Yuki Tanaka", "Olga Ivanova", "Lars Ørsted", "Fatima Zahra", "Pavel Dvořák", "Noémie Roy",
]
FORMATS = [".jpg", ".JPG", ".jpeg", ".png", ".webp", ".heic"]


def build_celeba(shared: Path, out: Path, n: int, seed: int) -> None:
    attributes = read_attribute_file(shared / "celeba" / "list_attr_celeba.txt")
    rng = np.random.default_rng(seed)
    picked = []
    for value in (-1, 1):
        rows = attributes[attributes["Male"] == value]
        picked.append(rows.iloc[rng.choice(len(rows), n // 2, replace=False)])
    sample = pd.concat(picked).sort_values("image_id")
    if out.exists():
        shutil.rmtree(out)
    (out / "img_align_celeba").mkdir(parents=True)
    for name in sample["image_id"]:
        shutil.copy2(shared / "celeba" / "img_align_celeba" / name, out / "img_align_celeba" / name)
    header = [c for c in sample.columns if c != "image_id"]
    lines = [str(len(sample)), " ".join(header)]
    lines += [f"{row.image_id} " + " ".join(f"{int(v):2d}" for v in row[1:]) for row in sample.itertuples(index=False)]
    (out / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    identities = pd.read_csv(shared / "celeba" / "identity_CelebA.txt", sep=r"\s+", header=None, names=["image_id", "identity"])
    identities[identities["image_id"].isin(sample["image_id"])].to_csv(
        out / "identity_CelebA.txt", sep=" ", header=False, index=False)
    print(f"celeba sample: {len(sample)} images -> {out}")


def build_students(shared: Path, out: Path, people: int, photos: int, exclude: set[str], seed: int) -> None:
    labels = pd.read_csv(shared / "celeba" / "gender_labels.csv")
    labels = labels[~labels["image_id"].isin(exclude)]
    counts = labels.groupby("identity").size()
    eligible = sorted(counts[counts >= photos].index)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(eligible, people, replace=False)
    if out.exists():
        shutil.rmtree(out)
    for person_index, (identity, name) in enumerate(zip(chosen, NAMES)):
        folder = out / name
        folder.mkdir(parents=True)
        files = labels[labels["identity"] == identity]["image_id"].tolist()[:photos]
        for photo_index, file_name in enumerate(files):
            suffix = FORMATS[(person_index + photo_index) % len(FORMATS)]
            image = Image.open(shared / "celeba" / "img_align_celeba" / file_name).convert("RGB")
            target = folder / f"photo {photo_index + 1}{suffix}"
            if suffix.lower() in (".jpg", ".jpeg"):
                shutil.copy2(shared / "celeba" / "img_align_celeba" / file_name, target)
            elif suffix == ".heic":
                image.save(target, format="HEIF", quality=85)
            elif suffix == ".webp":
                image.save(target, format="WEBP", quality=85)
            else:
                image.save(target, format="PNG", optimize=True)
    print(f"students sample: {people} people x {photos} photos -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--celeba-n", type=int, default=600)
    parser.add_argument("--people", type=int, default=24)
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import pillow_heif

    pillow_heif.register_heif_opener()
    celeba_out = REPO / "datasets" / "celeba" / "sample"
    build_celeba(args.shared, celeba_out, args.celeba_n, args.seed)
    exclude = {p.name for p in (celeba_out / "img_align_celeba").iterdir()}
    build_students(args.shared, REPO / "datasets" / "students" / "sample", args.people, args.photos, exclude, args.seed)


if __name__ == "__main__":
    main()

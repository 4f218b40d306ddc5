"""The face-embedding benchmark (``scripts/bench_faces.py``): ours vs dlib's on people never trained on.

Everything is measured on the evaluation people of :func:`tf_models.data.face_sets.identity_disjoint_split`
(whole people held out of face pretraining), framed by the project's own detector and crop:

- verification on sampled genuine and impostor pairs: 10-fold accuracy (mean ± std), TAR at FAR 1%
  and 0.1%, and a ROC plot;
- K-shot identification (K = 1, 3, 5; nearest centroid; all other photos tested);
- open-set FAR at FRR 5%, leave one person out.

Embedders side by side in one run: the shipped ``faces`` weights, any other pretraining run
(``NAME=RUN_DIR``, e.g. the margin-softmax-only run trained without a teacher) and, when installed,
dlib's 128-D embedding (its vectors come from the preparation cache, computed on the same photos).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tf_models.benchmarking import machine_info, machine_markdown, markdown_table
from tf_models.faces.verification import (
    kshot_identification,
    openset_far_at_frr,
    pair_scores,
    roc_curve,
    sample_pairs,
    tar_at_far,
    verification_folds,
)

SHOTS = (1, 3, 5)
TARGET_FARS = (0.01, 0.001)
OPENSET_FRR = 0.05


@dataclass(frozen=True)
class EmbedderResult:
    """One embedder's figures on the benchmark's people."""

    name: str
    row: dict[str, float | str]  # the table row
    roc: tuple[np.ndarray, np.ndarray]  # (FAR, TAR)


def evaluate_embeddings(name: str, embeddings: np.ndarray, people: Sequence[str], pairs: np.ndarray,
                        same: np.ndarray, seed: int = 0) -> EmbedderResult:
    """Every figure of the benchmark for one embedder's vectors of the evaluation photos."""
    scores = pair_scores(embeddings, pairs)
    folds = verification_folds(scores, same)
    row: dict[str, float | str] = {
        "embedder": name,
        "verification accuracy": round(float(folds.mean()), 4),
        "± std": round(float(folds.std()), 4),
    }
    for far in TARGET_FARS:
        row[f"TAR@FAR {far:g}"] = round(tar_at_far(scores, same, far), 4)
    for shots in SHOTS:
        accuracy, _ = kshot_identification(embeddings, people, shots, seed=seed)
        row[f"{shots}-shot id"] = round(accuracy, 4)
    openset = openset_far_at_frr(embeddings, people, OPENSET_FRR, seed=seed)
    row[f"open-set FAR @ FRR {OPENSET_FRR:g}"] = round(openset["far"], 4)
    # The cosine threshold that gave it: what FaceWeights.gallery_threshold records for shipped weights.
    row["open-set threshold"] = round(openset["threshold"], 4)
    return EmbedderResult(name, row, roc_curve(scores, same))


def plot_roc(results: Sequence[EmbedderResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.5))
    for result in results:
        far, tar = result.roc
        keep = far > 0
        axis.plot(far[keep], tar[keep], label=f"{result.name} ({result.row['verification accuracy']:.3f})")
    axis.set_xscale("log")
    axis.set_xlim(1e-3, 1)
    axis.set_xlabel("false accept rate (impostor pairs accepted)")
    axis.set_ylabel("true accept rate (genuine pairs accepted)")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_face_benchmark(embedders: dict[str, Callable[[np.ndarray], np.ndarray] | np.ndarray],
                       crops: np.ndarray, people: Sequence[str], out: str | Path, *, genuine: int = 3000,
                       impostor: int = 3000, seed: int = 0, notes: Sequence[str] = ()) -> pd.DataFrame:
    """Runs every embedder (a function crops -> unit embeddings, or ready embeddings) and writes
    ``faces.csv``, ``faces.md`` and ``roc.png`` to ``out``. Returns the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    pairs, same = sample_pairs(people, genuine, impostor, seed)
    results = []
    for name, embedder in embedders.items():
        vectors = embedder if isinstance(embedder, np.ndarray) else embedder(crops)
        results.append(evaluate_embeddings(name, vectors, people, pairs, same, seed))
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in results[-1].row.items() if k != "embedder"))
    table = pd.DataFrame([r.row for r in results])
    table.to_csv(out / "faces.csv", index=False)
    plot_roc(results, out / "roc.png", f"{len(set(people))} people never trained on, "
                                       f"{genuine} + {impostor} pairs")
    lines = [
        "# Face embeddings on people never trained on",
        "",
        f"Made by `scripts/bench_faces.py`. {len(crops)} photos of {len(set(people))} people held out of face "
        f"pretraining (`identity_disjoint_split`), framed by the project's detector and crop. Verification: "
        f"{genuine} genuine + {impostor} impostor pairs, 10 folds (threshold on 9, accuracy on the 10th). "
        f"K-shot: nearest centroid of K random photos a person, every other photo tested, 5 draws. Open-set: "
        f"leave one person out, 5 enrolment photos, threshold at {OPENSET_FRR:.0%} false rejects.",
        "",
        machine_markdown(info),
        *[f"- {note}" for note in notes],
        "",
        markdown_table(table),
        "![ROC](roc.png)",
        "",
    ]
    best = table.iloc[0]
    lines.append(f"Headline: {best['embedder']} verification {best['verification accuracy']:.4f} "
                 f"± {best['± std']:.4f}, 5-shot identification {best['5-shot id']:.4f}"
                 + (f"; dlib {table.loc[table.embedder == 'dlib', 'verification accuracy'].iloc[0]:.4f}"
                    if (table.embedder == "dlib").any() else ""))
    (out / "faces.md").write_text("\n".join(lines) + "\n")
    return table


DLIB_ON_OUR_CROPS = "dlib on our crops (our alignment, not dlib's)"


def dlib_on_crops(crops: np.ndarray) -> np.ndarray:
    """crops -> dlib's unit embeddings of each crop as it is, resized to dlib's 150x150 chip."""
    from tf_models.faces.dlib_reference import DLIB_DIM, DlibEmbedder
    from tf_models.images import resize_images

    embedder, vectors = DlibEmbedder(), []
    for start in range(0, len(crops), 256):
        chips = np.asarray(resize_images(crops[start:start + 256], (150, 150))).astype(np.uint8)
        vectors.extend(embedder.embed_chip(chip) for chip in chips)
    return np.stack(vectors) if vectors else np.zeros((0, DLIB_DIM), np.float32)


def keras_embedder(model, input_size: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """crops -> unit embeddings with a Keras face embedder (resized as serving resizes)."""
    from tf_models.train.face_pretraining import embed_crops

    return lambda crops: embed_crops(model, crops, input_size)


def served_embedder(source: str | Path, backbone: str = "mobilenetv2"):
    """The embedder of a face pretraining run folder, or of a ``face_weights.npz`` (the shipped format: a
    run's, or an earlier release of the package's), built as ``weights="faces"`` is served (with the
    mirror view), so the rows of the benchmark differ by their weights alone. A bare ``.npz`` is taken
    to be ``backbone``'s at its registry input size."""
    from tf_models.models.backbones import get_backbone
    from tf_models.models.face_embedder import DEFAULT_EMBEDDING_DIM, build_face_embedder
    from tf_models.train.face_pretraining import (FACE_WEIGHTS_FILE, PRETRAIN_CONFIG_FILE, PretrainConfig,
                                                  load_embedder_weights)

    source = Path(source)
    spec = get_backbone(backbone)
    input_size, dim = (spec.faces.input_size, spec.faces.embedding_dim) if spec.faces else (None, DEFAULT_EMBEDDING_DIM)
    if source.is_dir():
        config = PretrainConfig.from_yaml(source / PRETRAIN_CONFIG_FILE)
        backbone, input_size, dim, source = config.backbone, config.input_size, config.embedding_dim, \
            source / FACE_WEIGHTS_FILE
    if not source.is_file():
        raise FileNotFoundError(f"No face weights at {source}: give a face pretraining run folder or its "
                                f"{FACE_WEIGHTS_FILE}. Received: {source}")
    model = build_face_embedder(backbone, input_size, embedding_dim=dim, weights=None, mirror=True)
    load_embedder_weights(model, source)
    return model


def bench_faces(data_root: str | Path, out: str | Path, *, runs: dict[str, str | Path] | None = None,
                backbone: str = "mobilenetv2", include_dlib: bool = True, genuine: int = 3000,
                impostor: int = 3000, seed: int = 0, cache_dir: str | Path | None = None,
                command: str = "") -> pd.DataFrame:
    """The benchmark of the shipped ``faces`` weights, other runs and dlib on the held-out people."""
    from tf_models.faces.dlib_reference import INSTALL_HINT, dlib_available
    from tf_models.models.backbones import get_backbone
    from tf_models.models.face_embedder import build_face_embedder
    from tf_models.train.face_pretraining import PretrainConfig, load_pretraining_faces

    spec = get_backbone(backbone)
    # The preparation cache face pretraining made, framed as the shipped weights were trained (every row sees those).
    config = PretrainConfig(data_root=str(data_root), crop_align=spec.faces.aligned if spec.faces else True)
    if cache_dir is not None:
        config.cache_dir = str(cache_dir)
    _, faces = load_pretraining_faces(config)
    held_out = (faces.rows["split"] == "eval").to_numpy()
    crops, people = faces.crops[held_out], faces.rows.loc[held_out, "person"].tolist()
    notes = [f"command: `{command}`"] if command else []
    notes += [f"photos framed by the detector: {int((faces.rows.loc[held_out, 'found'] == 'face').sum())}, "
             f"kept whole (no face found; tight crops): {int((faces.rows.loc[held_out, 'found'] == 'whole').sum())}"]
    embedders: dict[str, Callable[[np.ndarray], np.ndarray] | np.ndarray] = {}
    if spec.faces is not None:
        embedders[f"{spec.name} faces (shipped)"] = keras_embedder(build_face_embedder(backbone), spec.faces.input_size)
    for name, source in (runs or {}).items():
        model = served_embedder(source, backbone)
        embedders[name] = keras_embedder(model, tuple(model.input_shape[1:3]))
    if include_dlib and dlib_available():
        embedders["dlib"] = faces.teacher[held_out]
        embedders[DLIB_ON_OUR_CROPS] = dlib_on_crops
        notes.append("dlib: dlib_face_recognition_resnet_model_v1 (face_recognition_models), its own 5-point "
                     "alignment inside our detector's box; trained on about 3 million faces")
        notes.append(f"{DLIB_ON_OUR_CROPS}: the same network given the crops the project's embedders see (as "
                     "the project cuts faces: CropSettings), resized to its 150x150 chip instead of its own chip: "
                     "what its input framing is worth to dlib")
    elif include_dlib:
        notes.append(f"dlib not installed: no reference row ({INSTALL_HINT})")
    if not embedders:
        raise ValueError("Nothing to benchmark: no shipped face weights for "
                         f"{backbone}, no --run and no dlib. Received: backbone={backbone!r}")
    return run_face_benchmark(embedders, crops, people, out, genuine=genuine, impostor=impostor, seed=seed,
                              notes=notes)


# ORL with K photos a person: 10 photos each, so K = 3 leaves 1 for validation and 6 to test.
ORL_SHOTS = 3


def orl_transfer_benchmark(orl_dir: str | Path, out: str | Path, runs_dir: str | Path, recipe: str | Path, *,
                           backbone: str = "mobilenetv2",
                           epochs: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Identity on ORL from 3 photos a person: scratch (the quality recipe) vs transfer from ``faces``,
    and the ``faces`` embedder's nearest centroid with no training at all. Same split for every row.

    Writes ``orl_k3.csv`` and ``orl_k3.md`` to ``out``.
    """
    import dataclasses

    from tf_models.config import TrainConfig
    from tf_models.data.folders import load_students
    from tf_models.identity.embedding import nearest_centroid_accuracy
    from tf_models.models.face_embedder import build_face_embedder
    from tf_models.train.training import train

    test_fraction = 1.0 - (ORL_SHOTS + 1) / 10.0
    base = dataclasses.replace(TrainConfig.load(Path(recipe)), data_dir=str(orl_dir), val_fraction=0.1,
                               test_fraction=round(test_fraction, 2), seed=seed)
    faces_transfer = dataclasses.replace(base, backbone=backbone, mode="transfer", weights="faces", input_size=None,
                                         epochs=60, lr=3e-3, schedule="cosine", label_smoothing=0.1,
                                         augment="none", head_units=())
    variants = {
        "scratch (quality recipe)": base,
        f"{backbone} transfer from faces": faces_transfer,
    }
    rows = []
    for name, config in variants.items():
        run_config = dataclasses.replace(config, out=str(Path(runs_dir) / name.split(" ")[0]),
                                         epochs=epochs or config.epochs)
        shutil.rmtree(run_config.out, ignore_errors=True)  # a leftover backup/ would resume an old run
        result = train(run_config, verbose=0)
        rows.append({"model": name, "backbone": run_config.backbone, "mode": run_config.mode,
                     "weights": run_config.weights, "epochs": result.metrics["epochs_run"],
                     "train photos a person": ORL_SHOTS, "test photos": result.metrics["n"],
                     "accuracy": round(result.metrics["accuracy"], 4)})
        print(f"ORL K={ORL_SHOTS}: {name}: accuracy {rows[-1]['accuracy']:.4f}")
    # No training: enrol the 3 training photos with the shipped embedder, name the test photos.
    table = load_students(orl_dir, crop=base.crop_settings(), fractions=base.fractions(), seed=seed, progress=False)
    embedder = build_face_embedder(backbone)
    accuracy = nearest_centroid_accuracy(embedder, table, enrol_splits=("train",), test_split="test")
    rows.append({"model": f"{backbone} faces embedder, nearest centroid (no training)", "backbone": backbone,
                 "mode": "gallery", "weights": "faces", "epochs": 0, "train photos a person": ORL_SHOTS,
                 "test photos": int((table.frame["split"] == "test").sum()), "accuracy": round(accuracy, 4)})
    frame = pd.DataFrame(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "orl_k3.csv", index=False)
    scratch, transfer = frame.iloc[0], frame.iloc[1]
    (out / "orl_k3.md").write_text(
        f"# ORL identity from {ORL_SHOTS} photos a person\n\nMade by `scripts/bench_faces.py` (its ORL part). 40 people, "
        f"{ORL_SHOTS} training + 1 validation photo each, the other 6 tested; the same split for every row. "
        "ORL was never used in face pretraining.\n\n" + machine_markdown(machine_info()) + "\n"
        + markdown_table(frame) + f"\nHeadline: ORL K={ORL_SHOTS}: transfer from faces {transfer['accuracy']:.4f} vs "
        f"scratch {scratch['accuracy']:.4f}\n")
    return frame


__all__ = ["EmbedderResult", "bench_faces", "orl_transfer_benchmark", "evaluate_embeddings", "keras_embedder", "run_face_benchmark"]

"""Leave-one-person-out evaluation of open-set identity: does a stranger come out Unknown?

For each person P: the gallery holds every *other* person's training embeddings, the threshold is
calibrated on the other people's validation faces for the target false-accept rate (P's photos play
no part in it), then P's held-out (test) faces are strangers that must come out Unknown and the
other people's held-out faces must be named correctly. Pooled over all folds:

- FAR: share of stranger faces accepted as anyone;
- FRR: share of known faces rejected as Unknown;
- misidentification rate: known faces accepted as the wrong person;
- DIR (detection and identification rate): known faces accepted as themselves (1 - FRR - misidentified);
- closed-set accuracy: known faces whose nearest centroid is their own, whatever the threshold.

Caveat, written into every report: the embedding network was trained with P as one of its classes,
so P is a stranger to the gallery but not to the network. People the model never saw (another
``--data-dir``) are reported as such and make a harder, more honest test.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tf_models.identity.calibration import calibrate_gallery
from tf_models.identity.embedding import gallery_from_embeddings

SPLIT_ROLES = {"gallery": "train", "calibration": "val", "test": "test"}


@dataclass
class OpenSetResult:
    """Per-fold rows, pooled scores for the curves, and the summary numbers."""

    folds: pd.DataFrame  # one row per left-out person
    stranger_scores: np.ndarray  # best similarity of each stranger face (all folds)
    known_scores: np.ndarray  # best similarity of each known face (all folds)
    known_correct: np.ndarray  # whether that best match is the right person
    summary: dict

    def curve(self, thresholds: np.ndarray | None = None) -> pd.DataFrame:
        """FAR, FRR and DIR over a threshold sweep (pooled scores, one threshold for all folds)."""
        if thresholds is None:
            thresholds = np.unique(np.concatenate([self.stranger_scores, self.known_scores, [-1.0, 1.0 + 1e-6]]))
        t = np.asarray(thresholds, dtype=np.float64)[:, None]
        far = (self.stranger_scores[None, :] >= t).mean(axis=1) if self.stranger_scores.size else np.full(len(t), np.nan)
        accepted = self.known_scores[None, :] >= t
        frr = (~accepted).mean(axis=1)
        dir_ = (accepted & self.known_correct[None, :]).mean(axis=1)
        return pd.DataFrame({"threshold": t[:, 0], "far": far, "frr": frr, "dir": dir_})


def leave_one_person_out(embeddings: np.ndarray, names: Sequence[str], splits: Sequence[str],
                         target_far: float = 0.01, *, progress: bool = True) -> OpenSetResult:
    """Runs the leave-one-person-out protocol of the module docstring on precomputed embeddings.

    Args:
        embeddings: (n, dim) face embeddings.
        names: the person of each row.
        splits: 'train' (gallery), 'val' (calibration) or 'test' (held-out faces) per row. Without any
            'val' rows the threshold is calibrated on the training faces (optimistic; noted in the summary).
        target_far: the false-accept rate the threshold is calibrated for.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    names_arr = np.asarray(list(names), dtype=object)
    splits_arr = np.asarray(list(splits), dtype=object)
    if not len(embeddings) == len(names_arr) == len(splits_arr):
        raise ValueError(f"embeddings, names and splits differ in length: {len(embeddings)}, {len(names_arr)}, "
                         f"{len(splits_arr)}")
    people = sorted(set(names_arr))
    if len(people) < 3:
        raise ValueError("Leave-one-person-out needs at least 3 people (a stranger plus a gallery of 2 to "
                         f"calibrate on). Received: {len(people)} people")
    gallery_rows = splits_arr == SPLIT_ROLES["gallery"]
    test_rows = splits_arr == SPLIT_ROLES["test"]
    calibration_rows = splits_arr == SPLIT_ROLES["calibration"]
    notes = []
    if not calibration_rows.any():
        calibration_rows = gallery_rows
        notes.append("no validation faces: the threshold was calibrated on the gallery's own training faces "
                     "(optimistic)")
    if not test_rows.any():
        raise ValueError("No held-out ('test') faces to evaluate: train the run with test_fraction > 0.")
    missing = sorted(set(people) - set(names_arr[gallery_rows]))
    if missing:
        raise ValueError(f"Every person needs training faces for the gallery; none for {missing[:5]}.")

    rows, stranger_scores, known_scores, known_correct = [], [], [], []
    for person in tqdm(people, desc="leave one person out", unit="person", disable=not progress, leave=False):
        others = names_arr != person
        gallery = gallery_from_embeddings(embeddings[gallery_rows & others], names_arr[gallery_rows & others].tolist())
        assert person not in gallery  # the protocol's one invariant
        calibration = calibrate_gallery(gallery, embeddings[calibration_rows & others],
                                        names_arr[calibration_rows & others].tolist(), target_far)
        strangers = gallery.match(embeddings[test_rows & ~others]) if (test_rows & ~others).any() else []
        known_idx = np.flatnonzero(test_rows & others)
        known = gallery.match(embeddings[known_idx]) if known_idx.size else []
        truth = names_arr[known_idx]
        stranger_scores += [m.similarity for m in strangers]
        known_scores += [m.similarity for m in known]
        known_correct += [m.best_name == t for m, t in zip(known, truth)]
        rows.append({
            "person": person, "threshold": calibration.threshold,
            "calibration_far": calibration.far, "calibration_frr": calibration.frr,
            "stranger_faces": len(strangers), "false_accepts": sum(m.is_known for m in strangers),
            "known_faces": len(known), "false_rejects": sum(not m.is_known for m in known),
            "misidentified": sum(m.is_known and m.name != t for m, t in zip(known, truth)),
            "correct_accepts": sum(m.name == t for m, t in zip(known, truth)),
            "closed_set_correct": sum(m.best_name == t for m, t in zip(known, truth)),
        })
    folds = pd.DataFrame(rows)
    return OpenSetResult(folds, np.asarray(stranger_scores, np.float64), np.asarray(known_scores, np.float64),
                         np.asarray(known_correct, bool), _summary(folds, target_far, len(people), notes))


def _summary(folds: pd.DataFrame, target_far: float, people: int, notes: list[str]) -> dict:
    """The rates over all folds (every stranger face and every known test face counted once)."""
    n_strangers, n_known = int(folds["stranger_faces"].sum()), int(folds["known_faces"].sum())

    def rate(column: str, total: int) -> float | None:
        return float(folds[column].sum() / total) if total else None

    return {
        "target_far": float(target_far), "people": people, "folds": len(folds),
        "far": rate("false_accepts", n_strangers), "frr": rate("false_rejects", n_known),
        "misidentification_rate": rate("misidentified", n_known),
        "dir": rate("correct_accepts", n_known),
        "closed_set_accuracy": rate("closed_set_correct", n_known),
        "stranger_faces": n_strangers, "known_faces": n_known,
        "false_accepts": int(folds["false_accepts"].sum()), "false_rejects": int(folds["false_rejects"].sum()),
        "threshold_mean": float(folds["threshold"].mean()), "threshold_min": float(folds["threshold"].min()),
        "threshold_max": float(folds["threshold"].max()),
        "calibration_far_mean": float(folds["calibration_far"].mean()),
        "calibration_frr_mean": float(folds["calibration_frr"].mean()),
        "notes": notes,
    }


def plot_openset(result: OpenSetResult, path: str | Path, title: str = "") -> None:
    """ROC (DIR and 1 - FRR against FAR) with the operating point, and the score histograms."""
    curve = result.curve()
    s = result.summary
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    ax = axes[0]
    ax.plot(curve["far"], curve["dir"], "-", label="known faces named correctly (DIR)")
    ax.plot(curve["far"], 1 - curve["frr"], "--", label="known faces accepted (1 - FRR)")
    if s["far"] is not None and s["dir"] is not None:
        ax.plot([s["far"]], [s["dir"]], "o", color="red",
                label=f"calibrated (target FAR {s['target_far']:g}): FAR {s['far']:.3f}, FRR {s['frr']:.3f}")
    ax.axvline(s["target_far"], color="grey", lw=0.8, ls=":")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false-accept rate (strangers accepted)")
    ax.set_ylabel("rate")
    ax.set_title(f"{title} open-set ROC, leave one person out".strip())
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    ax = axes[1]
    scores = np.concatenate([result.stranger_scores, result.known_scores])
    low, high = float(scores.min()), float(scores.max())
    pad = max(1e-4, 0.02 * (high - low))  # collapsed embeddings (an untrained model) still get visible bins
    bins = np.linspace(low - pad, high + pad, 41)
    groups = {"known, nearest = self": result.known_scores[result.known_correct],
              "known, nearest = other": result.known_scores[~result.known_correct],
              "strangers (left-out person)": result.stranger_scores}
    for label, values in groups.items():
        if values.size:  # density of an empty group is 0/0
            ax.hist(values, bins=bins, alpha=0.6, density=True, label=label)
    ax.axvline(s["threshold_mean"], color="red", lw=1, label=f"mean threshold {s['threshold_mean']:.3f}")
    ax.set_xlabel("best cosine similarity to a gallery centroid")
    ax.set_ylabel("density (each group sums to 1: strangers are few)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(result: OpenSetResult, info: dict) -> str:
    s = result.summary

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = ["# Open-set identity: leave one person out", ""]
    lines += [f"- {key}: `{value}`" for key, value in info.items()] + [""]
    lines += [("| target FAR | FAR | FRR | misidentified | DIR | closed-set accuracy | threshold (mean, min-max) | "
              "stranger faces | known faces |"), "|---" * 9 + "|",
              (f"| {s['target_far']:g} | {pct(s['far'])} | {pct(s['frr'])} | {pct(s['misidentification_rate'])} | "
              f"{pct(s['dir'])} | {pct(s['closed_set_accuracy'])} | {s['threshold_mean']:.3f} "
              f"({s['threshold_min']:.3f}-{s['threshold_max']:.3f}) | {s['stranger_faces']} | {s['known_faces']} |"), ""]
    lines += [("FAR: stranger faces (the left-out person's held-out photos) accepted as anyone. FRR: known faces "
              "rejected as Unknown. Misidentified: known faces accepted as someone else. DIR = 1 - FRR - "
              "misidentified. Closed-set accuracy: nearest centroid is the right person, threshold ignored. "
              "Each fold's threshold is calibrated on the other people's validation faces only."), ""]
    lines += [("Caveat: the embedding network was trained on every person of its run (the left-out one "
              "included), so strangers here are unknown to the gallery but not to the network; "
              "`seen_by_model` above says how many people that concerns.")]
    for note in s.get("notes", []):
        lines.append(f"\nNote: {note}.")
    lines += ["", "Per person: `openset_folds.csv`; curve: `openset_curve.csv`; plot: `openset_roc.png`."]
    return "\n".join(lines) + "\n"


def evaluate_openset(run_dir: str | Path, data_dir: str | Path, target_far: float = 0.01,
                     out: str | Path = "results/openset", batch_size: int | None = None) -> OpenSetResult:
    """Loads an identity run as training saved it, embeds ``data_dir``'s faces, runs leave-one-person-out.

    Writes ``openset.json`` (summary + run info), ``openset_folds.csv``, ``openset_curve.csv``,
    ``openset.md`` and ``openset_roc.png`` under ``out``.
    """
    from tf_models.config import load_table
    from tf_models.runs import load_run_model, read_run

    if str(run_dir) == "faces" or str(run_dir).startswith("faces:"):
        return _evaluate_face_embedder(str(run_dir).partition(":")[2] or "mobilenetv2", data_dir, target_far, out,
                                       batch_size or 32)
    run = read_run(run_dir)
    run_dir, config, class_names = run.run_dir, run.config, run.class_names
    if config.task != "identity" or run.crop is None:
        raise ValueError(f"Open-set evaluation needs an identity run folder (written by scripts/train.py --task "
                         f"identity, with its crop.json). Received: task={config.task!r} in {run_dir}")
    config = dataclasses.replace(config, data_dir=str(data_dir), balance="none", subset=None)
    if run.crop != config.crop_settings():
        raise ValueError(f"{run_dir}/crop.json {run.crop} disagrees with config.yaml's crop fields "
                         f"{config.crop_settings()}; the run folder was edited. Restore one from the other.")
    model = load_run_model(run_dir)
    return _evaluate_model(model, config, load_table(config), str(run_dir), class_names,
                           target_far, out, batch_size or config.batch_size)


def _evaluate_face_embedder(backbone: str, data_dir: str | Path, target_far: float, out: str | Path,
                            batch_size: int) -> OpenSetResult:
    """Open-set evaluation with the shipped ``faces`` embedder: no training on these people at all."""
    from tf_models.config import TrainConfig, load_table
    from tf_models.models.backbones import get_backbone
    from tf_models.models.face_embedder import build_face_embedder

    model = build_face_embedder(backbone)
    # Folder-per-person photos cut out as identity training cuts them; photos that are already face
    # crops (no face found) are kept whole.
    config = TrainConfig(task="identity", data_dir=str(data_dir), backbone=backbone, weights="faces",
                         keep_whole_if_no_face=True, crop_align=get_backbone(backbone).faces.aligned)
    return _evaluate_model(model, config, load_table(config), f"faces:{backbone}", [], target_far, out, batch_size)


def _evaluate_model(model, config, table, run_label: str, class_names: list[str], target_far: float,
                    out: str | Path, batch_size: int) -> OpenSetResult:
    from tf_models.identity.embedding import table_embeddings

    data_dir = config.data_dir
    embeddings, names, splits = table_embeddings(model, table, batch_size=batch_size)
    result = leave_one_person_out(embeddings, names, splits, target_far)
    seen = sorted(set(names) & set(class_names))
    mode = "faces embedder, no training" if run_label.startswith("faces:") else config.mode
    info = {"run": run_label, "data_dir": str(data_dir), "backbone": config.backbone, "mode": mode,
            "input_size": "x".join(map(str, model.input_shape[1:3])), "embedding_dim": int(embeddings.shape[1]),
            "people": len(set(names)), "seen_by_model": len(seen),
            "faces (train/val/test)": "/".join(str(splits.count(s)) for s in ("train", "val", "test"))}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.folds.to_csv(out / "openset_folds.csv", index=False, encoding="utf-8")
    result.curve().to_csv(out / "openset_curve.csv", index=False)
    (out / "openset.json").write_text(json.dumps({**result.summary, "info": info}, indent=2, ensure_ascii=False),
                                      encoding="utf-8")
    (out / "openset.md").write_text(_markdown(result, info), encoding="utf-8")
    plot_openset(result, out / "openset_roc.png", title=config.backbone)
    return result

"""The app's logic, without the UI: one photo in, every face boxed and labelled, attendance marked.

:class:`FaceService` holds what the Gradio app (``app_gradio.py``) serves:

- a gender :class:`~tf_models.serve.predictor.Predictor` and an identity one, fed the SAME detected faces
  (the photo is decoded and searched for faces once, then each model gets one batched call);
- an open-set :class:`~tf_models.identity.gallery.IdentityGallery`: a face is named by nearest centroid of
  the identity model's embeddings when the cosine similarity reaches the calibrated threshold,
  and is "Unknown" otherwise (the softmax top class would name a stranger; on ORL the nearest
  centroid is also far more accurate). Built from the identity run's training faces on first
  start, calibrated on its validation faces, saved in the state folder and reloaded afterwards;
- an :class:`~tf_models.app.attendance.AttendanceLog` (SQLite, WAL) in the state folder.

Admin actions (enrol, remove, view and export the log) need the password in the
:data:`ADMIN_PASSWORD_ENV` environment variable; they refuse when it is unset or wrong.
Nothing public returns gallery photos, embeddings or the log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from tf_models.app.attendance import AttendanceLog
from tf_models.app.rendering import (  # noqa: F401  TABLE_COLUMNS, UNCERTAIN: re-exported for the UI
    TABLE_COLUMNS,
    UNCERTAIN,
    UNKNOWN,
    Analysis,
    FaceResult,
    draw_faces,
)
from tf_models.runs import MODEL_FILE, RELEASES_DIR, file_sha1, load_run_model, read_run, release_run
from tf_models.identity.embedding import build_gallery_from_table
from tf_models.identity.gallery import GALLERY_JSON, IdentityGallery, Match
from tf_models.faces.detector import DetectedFace
from tf_models.images import ImageReadError
from tf_models.serve.predictor import FacePrediction, Predictor

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD_ENV = "TF_MODELS_ADMIN_PASSWORD"
DEFAULT_STATE_DIR = "app_state"
DEFAULT_BEST_DIR = "results/best"
DEFAULT_MAX_FACES = 10  # a lecturer checks the student(s) in front of the camera, not a crowd
FACE_EMBEDDER_BACKBONE = "mobilenetv2"  # the registry backbone whose shipped face weights the app enrols with
MAKE_MODEL_HINT = "Run `make demo` (minutes on a CPU) to train the demo models"
# Model-info tab: (title, Markdown file under the repository) in the order shown.
MODEL_INFO_FILES = (
    ("Gender: backbone comparison", "results/celeba_sample/comparison_gender.md"),
    ("Identity: backbone comparison", "results/students_sample/comparison_identity.md"),
    ("Open-set identity (leave one person out)", "results/openset/openset.md"),
    ("Inference time per runtime", "results/inference/bench_inference.md"),
    ("App latency (request to answer)", "results/app/bench_app.md"),
)
EXAMPLE_DIRS = ("datasets/students/sample", "datasets/celeba/sample/img_align_celeba")


class NoTrainedModel(RuntimeError):
    """No run to serve; the message says which command makes one."""


class AdminError(PermissionError):
    """An admin action without the right password (or with admin disabled)."""


# ---------------------------------------------------------------------------------------------
# Which runs to serve
# ---------------------------------------------------------------------------------------------


def _existing_path(path: str | Path) -> Path:
    """``path`` as given (relative to the working directory) or, failing that, relative to the repository."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path if (REPO_ROOT / path).exists() else path


def resolve_run(task: str, run_dir: str | Path | None = None, best_dir: str | Path = DEFAULT_BEST_DIR,
                release_dir: str | Path | None = None) -> Path:
    """The run folder to serve for ``task``: ``run_dir``; else the one in ``<best_dir>/<task>.json``;
    else (none recorded, or the recorded run is gone) the release model under ``release_dir``
    (default: the package's, :data:`tf_models.runs.RELEASES_DIR`).

    Raises :class:`NoTrainedModel` (a message naming the command that makes one) when there is none.
    """
    flag = f"--{task}-run"
    if run_dir is None:
        recorded, why = _recorded_run(task, best_dir)
        if recorded is None:
            release = release_run(task, release_dir or RELEASES_DIR)
            if release is None:
                raise NoTrainedModel(f"No trained {task} model yet: {why}. {MAKE_MODEL_HINT}, or pass {flag} RUN_DIR "
                                     "(a folder written by scripts/train.py).")
            print(f"[app] {why}: serving the release {task} model {release}")
            return release
        run_dir = recorded
    path = _existing_path(run_dir)
    try:
        run = read_run(path)
    except FileNotFoundError as err:
        raise NoTrainedModel(f"{err}\n{MAKE_MODEL_HINT}, or pass {flag} RUN_DIR.") from None
    if run.config.task != task:
        raise NoTrainedModel(f"{flag} must be a {task} run. Received: {path} (task={run.config.task!r})")
    return path


def _recorded_run(task: str, best_dir: str | Path) -> tuple[Path | None, str]:
    """(the finished run ``<best_dir>/<task>.json`` names, or None and why not)."""
    best = _existing_path(Path(best_dir) / f"{task}.json")
    if not best.is_file():
        return None, f"{Path(best_dir) / f'{task}.json'} is missing"
    try:
        path = _existing_path(json.loads(best.read_text(encoding="utf-8"))["run_dir"])
    except (ValueError, KeyError, TypeError) as err:
        return None, f"{best} does not name a run (key 'run_dir': {err!r})"
    try:
        read_run(path)
    except FileNotFoundError:
        return None, f"the run {best} names ({path}) is not on this machine"
    return path, ""


# ---------------------------------------------------------------------------------------------
# The gallery: built once per identity model, then reloaded
# ---------------------------------------------------------------------------------------------


def gallery_folder(state_dir: str | Path, identity_run: str | Path) -> Path:
    """Where the gallery of this identity model lives: one folder per model file (a retrained model
    has other embeddings, so it gets a fresh gallery instead of comparing with stale ones)."""
    run_dir = Path(identity_run)
    return Path(state_dir) / "gallery" / f"{run_dir.name}-{file_sha1(run_dir / MODEL_FILE)[:12]}"


def load_or_build_gallery(identity_run: str | Path, state_dir: str | Path, target_far: float = 0.01,
                          embedder: Predictor | None = None, folder: str | Path | None = None,
                          ) -> tuple[IdentityGallery, dict[str, Any]]:
    """The saved gallery of this identity model, or a new one from the run's own training faces.

    A new gallery enrols every person of the run's training split and calibrates the threshold on
    its validation split for ``target_far``; both are saved with ``calibration.json``. Returns
    (gallery, info for the model-info tab). When the run's data folder is gone, the gallery
    starts empty (people are enrolled in the admin tab). ``embedder``: the identity Predictor the app
    recognises with, so the gallery holds embeddings from the same runtime (int8 or float32) it is
    matched against; default: the run's Keras model. ``folder``: where the gallery is kept (default:
    :func:`gallery_folder`; another embedder of the same run's faces needs its own).
    """
    from tf_models.config import load_table

    folder = Path(folder) if folder is not None else gallery_folder(state_dir, identity_run)
    info_path = folder / "calibration.json"
    if (folder / GALLERY_JSON).is_file():
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        made_with = info.get("embedder_runtime")
        # Float32 runtimes agree to round-off (checked when they load); int8 against float32 moves similarities.
        serving = embedder.runtime.name if embedder is not None else None
        if made_with and serving and made_with != serving and "onnx-int8" in (made_with, serving):
            warnings.warn(f"The gallery in {folder} holds embeddings made with the {made_with} runtime; this "
                          f"machine serves {serving} (the runtime choice is measured per machine). "
                          f"Similarities shift slightly: re-enrol, or start with --runtime {made_with}.",
                          stacklevel=2)
        return IdentityGallery.load(folder), info
    run = read_run(identity_run)
    data_dir = _existing_path(run.config.data_dir)
    info: dict[str, Any] = {"identity_run": str(identity_run), "built": dt.datetime.now().astimezone().isoformat(
        timespec="seconds"), "data_dir": str(run.config.data_dir),
        "embedder_runtime": embedder.runtime.name if embedder is not None else "keras"}
    if not data_dir.is_dir():
        gallery = IdentityGallery()
        info["note"] = f"training data {run.config.data_dir} not found: empty gallery, enrol people in Admin"
    else:
        config = dataclasses.replace(run.config, data_dir=str(data_dir))
        if embedder is not None and embedder.crop is not None:
            config = config.cut_like(embedder.crop)  # e.g. the shipped face embedder: its own crops, the run's photos
        model = embedder.runtime if embedder is not None else load_run_model(identity_run)
        gallery, calibration = build_gallery_from_table(
            model, load_table(config), target_far=target_far, batch_size=config.batch_size,
            image_size=embedder.input_size if embedder is not None else None)
        if calibration is not None:
            info["calibration"] = dataclasses.asdict(calibration)
    gallery.save(folder)
    info_path.write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
    return gallery, info


def load_face_gallery(state_dir: str | Path, backbone: str = "mobilenetv2",
                      ) -> tuple[IdentityGallery, dict[str, Any], Path]:
    """The gallery of the shipped face embedder: saved in the state folder, or a new, empty one.

    Its threshold is the one measured for these weights on people never trained on
    (``FaceWeights.gallery_threshold``, from ``scripts/bench_faces.py``). One folder per weights
    file: other weights make other embeddings, so they start a fresh gallery.
    """
    from tf_models.models.backbones import face_weights_path, get_backbone

    spec = get_backbone(backbone)
    folder = Path(state_dir) / "gallery" / f"faces-{spec.name}-{file_sha1(face_weights_path(spec))[:12]}"
    info = {"embedder": f"faces:{spec.name}", "threshold_source": "scripts/bench_faces.py (held-out people)"}
    if (folder / GALLERY_JSON).is_file():
        return IdentityGallery.load(folder), info, folder
    info["note"] = "the gallery starts empty: enrol people in Admin, or start the app with --enrol-dir DIR"
    return IdentityGallery(spec.faces.gallery_threshold), info, folder


IDENTITY_CHOICES = ("better", "run")  # --identity-choice: the better embedder on the calibration faces, or the run


def better_embedder(run_calibration: dict[str, Any] | None, faces_calibration: dict[str, Any] | None) -> str:
    """``"run"`` or ``"faces"``: the one that falsely rejects fewer known faces at the same false-accept
    target on the run's calibration faces. A tie, or no calibration to compare, keeps the run the user gave."""
    if not run_calibration or not faces_calibration:
        return "run"
    return "faces" if faces_calibration["frr"] < run_calibration["frr"] else "run"


def shipped_face_embedder(runtime: str | None) -> Predictor:
    """The shipped face embedder, served with the app's ``--runtime``. That flag serves the runs too: an
    ``onnx-int8`` meant for them serves the embedder in float32 ``onnx`` (an embedder has no int8 model)."""
    return Predictor.from_face_weights(FACE_EMBEDDER_BACKBONE, runtime="onnx" if runtime == "onnx-int8" else runtime)


def identity_from_run(identity_dir: Path, state_dir: str | Path, target_far: float, runtime: str | None,
                      choice: str = "better") -> tuple[Predictor, IdentityGallery, dict[str, Any], Path, str]:
    """The identity model for a trained run: the run itself, or (``choice="better"``) the shipped face
    embedder when it measures better on the run's own calibration faces (its validation split).

    Returns (predictor, gallery, gallery info, gallery folder, label for the model-info tab).
    """
    if choice not in IDENTITY_CHOICES:
        raise ValueError(f"choice must be one of {IDENTITY_CHOICES}. Received: choice={choice!r}")
    run = Predictor.from_run(identity_dir, runtime=runtime, top_k=1)
    gallery, info = load_or_build_gallery(identity_dir, state_dir, target_far, embedder=run)
    folder, label = gallery_folder(state_dir, identity_dir), str(identity_dir)
    if choice == "run" or info.get("calibration") is None:
        return run, gallery, info, folder, label
    faces = shipped_face_embedder(runtime)
    faces_folder = folder.with_name(f"{folder.name}-faces-{FACE_EMBEDDER_BACKBONE}")
    faces_gallery, faces_info = load_or_build_gallery(identity_dir, state_dir, target_far, embedder=faces,
                                                      folder=faces_folder)
    winner = better_embedder(info.get("calibration"), faces_info.get("calibration"))
    compared = {name: {k: cal[k] for k in ("far", "frr", "threshold")}
                for name, cal in (("run", info["calibration"]), ("faces", faces_info.get("calibration"))) if cal}
    choice_info = {"served": winner, "target_far": target_far, "compared": compared,
                   "how": "false rejects at the same false-accept target on the run's validation faces"}
    print(f"[app] identity: {'the shipped face embedder' if winner == 'faces' else identity_dir} serves "
          f"(false rejects at FAR {target_far:g}: run {compared['run']['frr']:.3f}"
          + (f", face embedder {compared['faces']['frr']:.3f})" if "faces" in compared else ")"))
    if winner == "faces":
        return (faces, faces_gallery, {**faces_info, "identity_choice": choice_info}, faces_folder,
                f"faces:{FACE_EMBEDDER_BACKBONE} (measured better than {identity_dir})")
    return run, gallery, {**info, "identity_choice": choice_info}, folder, label


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------


class FaceService:
    """Gender + open-set identity + attendance for the app. Thread-safe (the parts are)."""

    def __init__(self, gender: Predictor, identity: Predictor, gallery: IdentityGallery, log: AttendanceLog, *,
                 gallery_dir: str | Path | None = None, max_faces: int = DEFAULT_MAX_FACES,
                 info: dict[str, Any] | None = None) -> None:
        if int(max_faces) < 1:
            raise ValueError(f"max_faces must be >= 1. Received: max_faces={max_faces!r}")
        self.gender = gender
        self.identity = identity
        self.gallery = gallery
        self.log = log
        self.gallery_dir = Path(gallery_dir) if gallery_dir else None
        self.max_faces = int(max_faces)
        self.info = info or {}
        # One detector for both models: the identity run's detection settings (students were cropped with them).
        self.detector = identity.framer.detector

    @classmethod
    def from_runs(cls, gender_run: str | Path | None = None, identity_run: str | Path | None = None, *,
                  state_dir: str | Path = DEFAULT_STATE_DIR, best_dir: str | Path = DEFAULT_BEST_DIR,
                  release_dir: str | Path | None = None, runtime: str | None = None,
                  max_faces: int = DEFAULT_MAX_FACES, target_far: float = 0.01,
                  identity_choice: str = "better") -> FaceService:
        """Loads both runs (default: the best ones recorded in ``best_dir``, else the release models in
        ``release_dir``), the gallery and the log. ``identity_choice``: with an identity run, "better"
        serves the shipped face embedder instead when it measures better on the run's calibration faces
        (:func:`identity_from_run`); "run" always serves the run.

        Raises :class:`NoTrainedModel` when a run is missing.
        """
        gender_dir = resolve_run("gender", gender_run, best_dir, release_dir)
        gender = Predictor.from_run(gender_dir, runtime=runtime, top_k=1)
        state = Path(state_dir)
        if identity_run is None:  # the shipped face embedder: people are enrolled, nothing is trained
            identity = shipped_face_embedder(runtime)
            gallery, gallery_info, folder = load_face_gallery(state_dir, FACE_EMBEDDER_BACKBONE)
            identity_label = f"faces:{FACE_EMBEDDER_BACKBONE} (shipped face embedder)"
        else:
            identity_dir = resolve_run("identity", identity_run, best_dir)
            identity, gallery, gallery_info, folder, identity_label = identity_from_run(
                identity_dir, state_dir, target_far, runtime, identity_choice)
        info = {"gender_run": str(gender_dir), "identity_run": identity_label,
                "runtime": {"gender": gender.runtime.name, "identity": identity.runtime.name},
                "gallery": gallery_info, "state_dir": str(state)}
        return cls(gender, identity, gallery, AttendanceLog(state / "attendance.sqlite"),
                   gallery_dir=folder, max_faces=max_faces, info=info)

    # -- recognition ------------------------------------------------------------------------------

    def _faces(self, pixels: np.ndarray) -> tuple[list[DetectedFace], int]:
        """(the largest ``max_faces`` detections, how many were found)."""
        found = self.detector.detect(pixels)
        return found[: self.max_faces], len(found)

    def analyze(self, image: str | Path | np.ndarray | Image.Image | None, min_confidence: float = 0.0,
                course: str = "", date: str | dt.date = "", mark_attendance: bool = False) -> Analysis:
        """Every face of one photo: gender, identity (or Unknown), and attendance when asked.

        ``min_confidence``: labels below it show as "uncertain" (gender) or Unknown (identity, on
        top of the gallery's calibrated threshold), and only named faces at or above it are marked.
        A person is named on one face of the photo at most, the closest (:meth:`IdentityGallery.match_photo`).
        Never raises for a bad photo or bad session fields: the reason is in the returned message.
        """
        if image is None:
            return Analysis(None, message="Upload a photo or take one with the webcam.", error=True)
        try:
            pixels = Predictor.load_pixels(image)  # the predictor's own decoding: read_image for files
            detected, found = self._faces(pixels)
        except ImageReadError as err:
            return Analysis(None, message=f"This file cannot be used as a photo: {err.reason}.", error=True)
        except ValueError as err:  # an array of the wrong shape or dtype
            return Analysis(None, message=f"This image cannot be used: {err}", error=True)
        if not detected:
            return Analysis(draw_faces(pixels, []), message="No face found in this photo. Use a photo where the face "
                            "is visible, lit and not too small (at least about 2% of the photo's longer side).",
                            error=True)
        genders = self.gender.predict_faces(pixels, detected)
        identities = self.identity.predict_faces(pixels, detected)
        matches = self.gallery.match_photo(np.stack([face.embedding for face in identities]))
        faces = [self._result(k + 1, g, m, min_confidence) for k, (g, m) in enumerate(zip(genders, matches))]
        notes = [f"{found} face{'s' if found != 1 else ''} found."]
        if found > len(detected):
            notes.append(f"Only the {len(detected)} largest are labelled (the app's limit, --max-faces).")
        if mark_attendance:
            faces, note = self._mark(faces, course, date, min_confidence)
            notes.append(note)
        return Analysis(draw_faces(pixels, faces), faces, " ".join(notes))

    def _result(self, index: int, gender: FacePrediction, match: Match, min_confidence: float) -> FaceResult:
        similarity = float(np.clip(match.similarity, 0.0, 1.0))
        known = match.name is not None and similarity >= min_confidence
        # "but face k is closer" only where this face alone would have been named: the closer face then is.
        outranked = match.closer_face is not None and similarity >= min_confidence
        return FaceResult(index, gender.box, gender.label if gender.confidence >= min_confidence else UNCERTAIN,
                          gender.confidence, match.name if known else UNKNOWN, similarity,
                          closest=match.best_name, threshold=max(self.gallery.threshold, min_confidence),
                          closer_face=match.closer_face + 1 if outranked else None)

    def _mark(self, faces: list[FaceResult], course: str, date: str | dt.date,
              min_confidence: float) -> tuple[list[FaceResult], str]:
        named = [face for face in faces if face.identity != UNKNOWN and face.identity_confidence >= min_confidence]
        if not named:
            return faces, "Nobody recognised: no attendance marked."
        try:
            status = {face.index: self.log.mark(course, date, face.identity, face.identity_confidence)
                      for face in named}
        except ValueError as err:  # course or date: AttendanceLog says what it expects
            return faces, f"Attendance not marked: {err}"
        faces = [dataclasses.replace(face, attendance="marked present" if status[face.index] else "already present")
                 if face.index in status else face for face in faces]
        new = [face.identity for face in faces if face.attendance == "marked present"]
        return faces, (f"Marked present at {course.strip()} {date}: {', '.join(new)}." if new
                       else f"Already marked present at {course.strip()} {date}.")

    # -- admin ------------------------------------------------------------------------------------

    @staticmethod
    def check_admin(password: str | None) -> None:
        """Raises :class:`AdminError` unless ``password`` equals the one in :data:`ADMIN_PASSWORD_ENV`."""
        expected = os.environ.get(ADMIN_PASSWORD_ENV, "")
        if not expected:
            raise AdminError(f"Admin is disabled: set the {ADMIN_PASSWORD_ENV} environment variable before "
                             "starting the app.")
        if not hmac.compare_digest((password or "").encode("utf-8"), expected.encode("utf-8")):
            raise AdminError("Wrong admin password.")

    def enrol(self, password: str | None, name: str, images: Sequence[str | Path]) -> str:
        """Enrols ``name`` from a few photos (the largest face of each), no retraining; saves the gallery.

        Returns a message saying how many photos were used and why others were skipped. Raises
        AdminError, or ValueError when no photo gives a face.
        """
        self.check_admin(password)
        return self._enrol(name, images)

    def enrol_folder(self, folder: str | Path) -> list[str]:
        """Enrols every ``folder/<Person Name>/`` from its photos (the app's ``--enrol-dir``); one message
        a person. A person with no usable photo is reported, not enrolled; the others still are."""
        from tf_models.images import is_image_path

        root = Path(folder).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--enrol-dir must be a folder of <Person Name>/ folders. Received: {str(folder)!r}")
        messages = []
        for person in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            photos = sorted(p for p in person.rglob("*") if p.is_file() and is_image_path(p))
            try:
                messages.append(self._enrol(person.name, photos))
            except ValueError as err:
                messages.append(f"{person.name}: {err}")
        return messages

    def _enrol(self, name: str, images: Sequence[str | Path]) -> str:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"Enter the person's name. Received: name={name!r}")
        embeddings, skipped = [], []
        for path in images or []:
            label = Path(path).name
            try:
                pixels = Predictor.load_pixels(path)
                detected, _ = self._faces(pixels)
            except ImageReadError as err:
                skipped.append(f"{label}: {err.reason}")
                continue
            if not detected:
                skipped.append(f"{label}: no face found")
                continue
            embeddings.append(self.identity.predict_faces(pixels, detected[:1])[0].embedding)
        if not embeddings:
            reasons = "; ".join(skipped) or "no photo uploaded"
            raise ValueError(f"Nobody enrolled: no usable face in the photos ({reasons}).")
        count = self.gallery.enrol(name, np.stack(embeddings))
        self._save_gallery()
        message = f"Enrolled {name.strip()}: {len(embeddings)} photo(s) added, {count} in the gallery."
        return message + (f" Skipped: {'; '.join(skipped)}." if skipped else "")

    def remove(self, password: str | None, name: str) -> str:
        """Removes a person from the gallery (their faces come out Unknown from now on); saves it."""
        self.check_admin(password)
        try:
            self.gallery.remove(name)
        except (KeyError, ValueError) as err:
            raise ValueError(str(err.args[0] if err.args else err)) from None
        self._save_gallery()
        return f"Removed {name.strip()}: {len(self.gallery)} people enrolled."

    def people(self, password: str | None) -> list[str]:
        """Enrolled names (admin only: who is enrolled is not public)."""
        self.check_admin(password)
        return self.gallery.names

    def session_log(self, password: str | None, course: str, date: str | dt.date) -> pd.DataFrame:
        """The session's marks (course, date, name, confidence, marked_at), in the order made."""
        self.check_admin(password)
        return self.log.session_rows(course, date)

    def sessions(self, password: str | None) -> pd.DataFrame:
        """Every session with marks (course, date, present), latest first."""
        self.check_admin(password)
        return self.log.sessions()

    def export_session_csv(self, password: str | None, course: str, date: str | dt.date) -> Path:
        """The session's log as a CSV file in a fresh temporary folder (for a download)."""
        self.check_admin(password)
        self.log.session_rows(course, date)  # validates course and date before a file is made
        slug = re.sub(r"[^\w.-]+", "_", f"attendance_{course.strip()}_{date}").strip("_")
        folder = Path(tempfile.mkdtemp(prefix="tf_models_attendance_"))
        return self.log.export_csv(course, date, folder / f"{slug}.csv")

    def _save_gallery(self) -> None:
        if self.gallery_dir is not None:
            self.gallery.save(self.gallery_dir)

    # -- model info -------------------------------------------------------------------------------

    def model_info_markdown(self) -> str:
        """Which runs are loaded, the gallery, and the results tables (Markdown)."""
        lines = ["## Loaded models", "", "| task | run | classes | input | runtime |", "| --- | --- | --- | --- | --- |"]
        for task, predictor in (("gender", self.gender), ("identity", self.identity)):
            run = self.info.get(f"{task}_run", "?")
            lines.append(f"| {task} | `{run}` | {len(predictor.class_names) or 'embeddings only'} | "
                         f"{predictor.input_size[0]}x{predictor.input_size[1]} | {predictor.runtime.name} |")
        calibration = self.info.get("gallery", {}).get("calibration")
        lines += ["", f"Open-set gallery: {len(self.gallery)} people, cosine threshold {self.gallery.threshold:.3f}"
                  + (f" (calibrated for a false-accept rate of {calibration['target_far']:g}: FAR "
                     f"{calibration['far']:.3f}, FRR {calibration['frr']:.3f} on the validation faces)."
                     if calibration else " (not calibrated).")]
        if note := self.info.get("gallery", {}).get("note"):
            lines.append(f"Note: {note}.")
        return "\n".join(lines) + "\n\n" + results_markdown()


def results_markdown(root: str | Path = REPO_ROOT) -> str:
    """The results tables of :data:`MODEL_INFO_FILES`, each under its title; a hint where one is missing."""
    parts = []
    for title, relative in MODEL_INFO_FILES:
        path = Path(root) / relative
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            # The files' own first-level titles would outrank the tab's sections; images are not served.
            text = re.sub(r"^# ", "#### ", text, flags=re.MULTILINE)
            text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"(plot: \1)", text)
            parts.append(f"## {title}\n\n{text}")
        else:
            parts.append(f"## {title}\n\nNot measured yet (`{relative}` is missing).")
    return "\n\n".join(parts)


def example_images(root: str | Path = REPO_ROOT, per_folder: int = 3) -> list[str]:
    """A few bundled sample photos for the app's examples (students first, then CelebA)."""
    from tf_models.images import is_image_path

    examples = []
    for relative in EXAMPLE_DIRS:
        folder = Path(root) / relative
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p)
                       and p.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder.is_dir() else []
        # Spread over people/photos instead of the first person's photos only.
        step = max(1, len(files) // per_folder)
        examples += [str(p) for p in files[::step][:per_folder]]
    return examples


__all__ = [
    "ADMIN_PASSWORD_ENV",
    "TABLE_COLUMNS",
    "UNKNOWN",
    "AdminError",
    "Analysis",
    "FaceResult",
    "FaceService",
    "IDENTITY_CHOICES",
    "NoTrainedModel",
    "better_embedder",
    "identity_from_run",
    "draw_faces",
    "example_images",
    "gallery_folder",
    "load_face_gallery",
    "load_or_build_gallery",
    "resolve_run",
    "results_markdown",
]

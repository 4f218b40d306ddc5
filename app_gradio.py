#!/usr/bin/env python
"""Gradio app: every face in a photo boxed and labelled (gender, identity or Unknown), attendance marked.

    python app_gradio.py                     # the best gender run of `make demo` (else the shipped release model),
                                             # identity by the shipped face embedder
    python app_gradio.py --enrol-dir datasets/students/sample      # ... with these people enrolled at start
    python app_gradio.py --gender-run runs/gender_resnet50 --identity-run runs/students --share
    TF_MODELS_ADMIN_PASSWORD=... python app_gradio.py --server-name 0.0.0.0 --server-port 7860

Tabs: "Recognise" (upload or webcam), "Model info" (the comparison and inference-time tables from
results/ and the loaded runs), "Admin" (enrol a person from a few photos without retraining, remove
one, view a session's log, download it as CSV), which needs the password in the environment
variable TF_MODELS_ADMIN_PASSWORD (admin is refused while it is unset). Identity is open-set: the
nearest enrolled person by cosine similarity of the identity model's embeddings, "Unknown" below a
threshold calibrated for a 1% false-accept rate. The gallery and the attendance log (SQLite) live
in --state-dir (default app_state/).

API (one queue, --concurrency-limit requests at a time), with ``pip install gradio_client``::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    image, table, message = client.predict(
        handle_file("photo.jpg"),   # the photo
        0.0,                        # minimum confidence (labels below it: "uncertain" / Unknown)
        "CS101",                    # course   } the attendance session; used only when
        "2025-03-14",               # date     } mark_attendance is True
        True,                       # mark_attendance
        api_name="/recognise",
    )
    # image: path of the annotated JPEG; table: {"headers": [...], "data": [[face, gender,
    # gender probability, identity, identity match ("0.82 >= 0.55", "closest: Ana, 0.41 < 0.55", or
    # "closest: Ana, 0.61 >= 0.55, but face 2 is closer": one face per person a photo),
    # attendance], ...]}; message: "1 face found. ..."
    # or why nothing was found ("This file cannot be used as a photo: not an image ...").

Admin endpoints take the admin password first: ``/enrol`` (password, name, [handle_file(...), ...]),
``/remove`` (password, name), ``/session_log`` (password, course, date) and ``/export_log``
(password, course, date) -> (CSV path, message). ``client.view_api()`` lists them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

DEFAULT_CONCURRENCY = 2  # 2 CPU cores: more parallel requests only queue inside TensorFlow
MAX_FILE_SIZE = "25mb"  # a phone photo is under 15 MB; larger uploads are refused before decoding


def build_parser() -> argparse.ArgumentParser:
    from tf_models.app.service import DEFAULT_BEST_DIR, DEFAULT_MAX_FACES, DEFAULT_STATE_DIR
    from tf_models.serve.serving import RUNTIME_CHOICES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gender-run", help=f"gender run folder (default: the one in {DEFAULT_BEST_DIR}/gender.json)")
    parser.add_argument("--identity-run",
                        help="identity run folder to embed faces with (default: the face embedder shipped in the "
                             "package, weights='faces': enrol people from a few photos, nothing to train)")
    parser.add_argument("--identity-choice", choices=("better", "run"), default="better",
                        help="with --identity-run: serve the shipped face embedder instead when it rejects fewer "
                             "known faces on the run's calibration faces (better, default), or always the run")
    parser.add_argument("--enrol-dir", help="enrol every <Person Name>/ folder of photos in DIR at start")
    parser.add_argument("--best-dir", default=DEFAULT_BEST_DIR,
                        help=f"where `make demo` records the best runs (default: {DEFAULT_BEST_DIR})")
    parser.add_argument("--release-dir", default=None,
                        help="release models served when no best run is recorded (default: the package's, "
                             "made by scripts/make_release.py)")
    parser.add_argument("--state-dir", default=os.environ.get("TF_MODELS_STATE_DIR", DEFAULT_STATE_DIR),
                        help="gallery and attendance database (default: $TF_MODELS_STATE_DIR, else "
                             f"{DEFAULT_STATE_DIR}/; on a Space with persistent storage: /data/app_state)")
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                        help="inference runtime (default: auto, the fastest on this CPU, measured once per run "
                             "and CPU and cached in RUN/exports/runtime_choice.json; the shipped face embedder's in "
                             "the user cache, float32 only: onnx-int8 serves it as onnx)")
    parser.add_argument("--max-faces", type=int, default=DEFAULT_MAX_FACES,
                        help=f"faces labelled per photo, largest first (default: {DEFAULT_MAX_FACES})")
    parser.add_argument("--target-far", type=float, default=0.01,
                        help="false-accept rate the gallery threshold is calibrated for on first start (default: 0.01)")
    parser.add_argument("--concurrency-limit", type=int, default=DEFAULT_CONCURRENCY,
                        help=f"requests processed at the same time; others wait in the queue (default: {DEFAULT_CONCURRENCY})")
    parser.add_argument("--share", action="store_true", help="also serve on a public *.gradio.live link")
    parser.add_argument("--server-name", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for a network)")
    parser.add_argument("--server-port", type=int, help="port (default: 7860, or the next free one)")
    return parser


def _pass_upload_through(component: Any, payload: Any) -> Any:
    """An input image's preprocess that hands over the uploaded file untouched: gradio's own opens it
    with PIL and fails with a bare error on a non-image or empty file; read_image says what is wrong."""
    if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
        return payload.path
    return type(component).preprocess(component, payload)


def _save_answer_atomically(component: Any, value: Any) -> Any:
    """An output image's postprocess that writes the cached JPEG atomically. Gradio's own rewrites the
    content-addressed file in place, so two identical answers at once (the same photo sent twice)
    could serve a half-written file ("Too little data for declared Content-Length")."""
    from gradio.data_classes import ImageData
    from PIL import Image

    if not isinstance(value, Image.Image):
        return type(component).postprocess(component, value)
    buffer = io.BytesIO()
    value.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    folder = Path(component.GRADIO_CACHE) / hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "faces.jpeg"
    if not path.exists():  # same bytes, same name: an existing file is already right
        handle, temp = tempfile.mkstemp(dir=folder, prefix=".faces.")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temp, path)
    return ImageData(path=str(path), orig_name=path.name)


def build_demo(service: Any) -> Any:
    """The Blocks UI around a :class:`tf_models.app.service.FaceService`."""
    import gradio as gr

    def today() -> tuple[str, str]:  # at each page load, not once at start: the app may run for days
        return dt.date.today().isoformat(), dt.date.today().isoformat()

    # delete_cache: uploads and answers older than an hour are removed hourly (a long-running app's disk).
    with gr.Blocks(title="Faces: gender and attendance", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Faces: gender and attendance\nEvery face is boxed and labelled with its gender and who it "
                    "is, or **Unknown** for someone not enrolled. Tick *Mark attendance* to record the people "
                    "recognised as present at the session (course and date).")
        with gr.Tab("Recognise"):
            date = _recognise_tab(gr, service)
        with gr.Tab("Model info"):
            gr.Markdown(service.model_info_markdown())
        with gr.Tab("Admin"):
            log_date = _admin_tab(gr, service)
        demo.load(today, None, [date, log_date], api_visibility="private")
    return demo


def _recognise_tab(gr: Any, service: Any) -> Any:
    """Photo in, annotated faces + table out (API: /recognise). Returns the session-date box."""
    from tf_models.app.service import TABLE_COLUMNS, example_images

    def recognise(image: str | None, min_confidence: float, course: str, date: str,
                  mark_attendance: bool) -> tuple[Any, Any, str]:
        analysis = service.analyze(image, min_confidence, course or "", date or "", bool(mark_attendance))
        if analysis.error:
            gr.Warning(analysis.message)
        return analysis.image, analysis.table(), analysis.message

    with gr.Row():
        with gr.Column():
            photo = gr.Image(label="Photo", sources=["upload", "webcam"], type="filepath")
            # Per instance, not a subclass: gradio writes a .pyi stub next to any module defining one.
            photo.preprocess = types.MethodType(_pass_upload_through, photo)
            confidence = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Minimum confidence",
                                   info="labels below it show as 'uncertain' / Unknown")
            with gr.Row():
                course = gr.Textbox(label="Course", placeholder="e.g. CS101")
                date = gr.Textbox(label="Date (YYYY-MM-DD)")
            mark = gr.Checkbox(label="Mark attendance", value=False)
            button = gr.Button("Recognise", variant="primary")
        with gr.Column():
            annotated = gr.Image(label="Faces", type="pil", format="jpeg", interactive=False)
            annotated.postprocess = types.MethodType(_save_answer_atomically, annotated)
            message = gr.Textbox(label="Status", interactive=False)
            table = gr.Dataframe(headers=TABLE_COLUMNS, label="Faces", interactive=False)
    gr.Examples(examples=[[path] for path in example_images()], inputs=[photo], label="Examples")
    button.click(recognise, [photo, confidence, course, date, mark], [annotated, table, message],
                 api_name="recognise")
    return date


def _admin_tab(gr: Any, service: Any) -> Any:
    """Enrol, remove, view and download the log (API: /enrol, /remove, /session_log, /export_log).
    Returns the log-date box."""
    import pandas as pd

    from tf_models.app.attendance import COLUMNS as LOG_COLUMNS
    from tf_models.app.service import AdminError

    def guarded(action: Any, empty: Any) -> Any:
        """Runs an admin action; a refusal or bad field is a warning and ``empty`` results, never a traceback."""
        def run(*args: Any) -> Any:
            try:
                return action(*args)
            except (AdminError, ValueError) as err:
                gr.Warning(str(err))
                return str(err) if empty is None else (empty(), str(err))
        return run

    def session_log(password: str, course: str, date: str) -> tuple[Any, str]:
        rows = service.session_log(password, course, date)
        recent = ", ".join(f"{r.course} {r.date} ({r.present})" for r in service.sessions(password).head(10).itertuples())
        return rows, f"{len(rows)} present at {course.strip()} {date}. Sessions: {recent or 'none yet'}."

    def export_log(password: str, course: str, date: str) -> tuple[str | None, str]:
        path = service.export_session_csv(password, course, date)
        return str(path), f"{path.name} ready."

    gr.Markdown("Admin actions need the password set in the `TF_MODELS_ADMIN_PASSWORD` environment "
                "variable of the app's server.")
    password = gr.Textbox(label="Admin password", type="password")
    status = gr.Textbox(label="Status", interactive=False)
    with gr.Accordion("Enrol a person (a few photos, no retraining)", open=True):
        name = gr.Textbox(label="Name")
        files = gr.File(label="Photos of the person (one face each)", file_count="multiple", type="filepath")
        gr.Button("Enrol").click(guarded(lambda p, n, f: service.enrol(p, n, f or []), None),
                                 [password, name, files], [status], api_name="enrol")
    with gr.Accordion("Remove a person", open=False):
        remove_name = gr.Textbox(label="Name")
        gr.Button("Remove").click(guarded(service.remove, None), [password, remove_name], [status],
                                  api_name="remove")
    with gr.Accordion("Session log", open=True):
        with gr.Row():
            log_course = gr.Textbox(label="Course")
            log_date = gr.Textbox(label="Date (YYYY-MM-DD)")
        log_table = gr.Dataframe(label="Present", interactive=False)
        log_file = gr.File(label="Session CSV", interactive=False)
        with gr.Row():
            gr.Button("View log").click(guarded(session_log, lambda: pd.DataFrame(columns=list(LOG_COLUMNS))),
                                        [password, log_course, log_date], [log_table, status],
                                        api_name="session_log")
            gr.Button("Download CSV").click(guarded(export_log, lambda: None), [password, log_course, log_date],
                                            [log_file, status], api_name="export_log")
    return log_date


def launch(demo: Any, *, concurrency_limit: int = DEFAULT_CONCURRENCY, **launch_kwargs: Any) -> Any:
    """Queues ``demo`` with a concurrency limit and launches it (``launch_kwargs`` go to ``Blocks.launch``)."""
    from tf_models.app.service import EXAMPLE_DIRS, REPO_ROOT

    if int(concurrency_limit) < 1:
        raise ValueError(f"concurrency_limit must be >= 1. Received: concurrency_limit={concurrency_limit!r}")
    demo.queue(default_concurrency_limit=int(concurrency_limit))
    # Only the bundled example folders are served from disk besides gradio's own cache.
    return demo.launch(allowed_paths=[str(REPO_ROOT / d) for d in EXAMPLE_DIRS], max_file_size=MAX_FILE_SIZE,
                       show_error=True, **launch_kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tf_models.app.service import FaceService, NoTrainedModel

    try:
        service = FaceService.from_runs(args.gender_run, args.identity_run, state_dir=args.state_dir,
                                        best_dir=args.best_dir, release_dir=args.release_dir,
                                        runtime=args.runtime, max_faces=args.max_faces,
                                        target_far=args.target_far, identity_choice=args.identity_choice)
    except NoTrainedModel as err:
        print(f"app_gradio.py: {err}", file=sys.stderr)
        return 2
    if args.enrol_dir:
        try:
            for message in service.enrol_folder(args.enrol_dir):
                print(message)
        except FileNotFoundError as err:
            print(f"app_gradio.py: {err}", file=sys.stderr)
            return 2
    launch(build_demo(service), concurrency_limit=args.concurrency_limit, share=args.share,
           server_name=args.server_name, server_port=args.server_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

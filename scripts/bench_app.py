#!/usr/bin/env python
"""End-to-end latency of the Gradio app: one single-face 1280x960 photo, request to answer, over HTTP.

    python scripts/bench_app.py                      # the best demo runs (results/best/<task>.json)
    python scripts/bench_app.py --gender-run runs/g --identity-run runs/i --repeats 100

Starts ``app_gradio.py`` in its own process on a free local port (as users run it), then times
``/recognise`` over plain HTTP (upload, call, server-sent events, download of the annotated image,
each phase timed) and, alternately, through ``gradio_client``. The first --warmup requests are not
counted. For the split, the same photo also goes through ``FaceService.analyze`` in this process.
Targets: p50 <= 250 ms on a 2-core CPU, and at most 1.5x ``analyze`` alone (what Gradio adds). Writes bench_app.csv and bench_app.md under --out; the last
line printed is the headline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO = REPO_ROOT.parent / "shared" / "data" / "scenes" / "deepface_img2.jpg"  # 1536x1152, one face


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gender-run", help="gender run folder (default: results/best/gender.json)")
    parser.add_argument("--identity-run", help="identity run folder (default: results/best/identity.json)")
    parser.add_argument("--runtime", help="inference runtime passed to the app (default: the app's)")
    parser.add_argument("--state-dir", default="app_state", help="the app's state folder (default: app_state/)")
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="a photo with one face (resized to 1280x960)")
    parser.add_argument("--repeats", type=int, default=50, help="timed requests (default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests first (default: 5)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "app", help="output folder")
    args = parser.parse_args(argv)
    if args.repeats < 2 or args.warmup < 0:
        parser.error(f"--repeats must be >= 2 and --warmup >= 0. Received: {args.repeats}, {args.warmup}")
    if not args.photo.is_file():
        parser.error(f"--photo not found. Received: {args.photo}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tf_models.bench.app import AppBenchSettings, AppStartError, bench_app

    settings = AppBenchSettings(gender_run=args.gender_run, identity_run=args.identity_run, runtime=args.runtime,
                                state_dir=args.state_dir, photo=args.photo, repeats=args.repeats, warmup=args.warmup)
    command = "python scripts/bench_app.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        result = bench_app(settings, REPO_ROOT / "app_gradio.py", args.out, command.strip())
    except AppStartError as err:
        raise SystemExit(str(err)) from None
    print(f"wrote {result.csv_path} and {result.md_path}")
    print(result.headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())

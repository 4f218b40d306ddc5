#!/usr/bin/env python
"""Face embeddings on people never trained on: the shipped weights="faces", other runs, dlib.

    python scripts/bench_faces.py                                   # faces (shipped) + dlib
    python scripts/bench_faces.py --run scratch=runs/faces/mobilenetv2_arcface
    python scripts/bench_faces.py --run "earlier weights=old/mobilenetv2_faces.npz"

Verification (3,000 + 3,000 pairs, 10 folds), TAR at FAR 1% / 0.1%, K-shot identification
(K = 1, 3, 5) and open-set FAR at FRR 5%, side by side, on the people face pretraining held out.
dlib's row needs the benchmark-only extra: pip install dlib-bin face_recognition_models.
Then ORL identity from 3 photos a person: scratch (configs/quality_identity.yaml) vs transfer from
faces vs the faces embedder's nearest centroid (--no-orl skips it). Writes faces.csv, faces.md,
roc.png, orl_k3.csv and orl_k3.md to --out; the headline is the last line.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data", help="shared data folder (faces/, celeba/)")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR_OR_NPZ",
                        help="another face pretraining run folder, or a face_weights.npz, to compare (repeatable)")
    parser.add_argument("--backbone", default="mobilenetv2", help="backbone whose shipped faces weights to test")
    parser.add_argument("--no-dlib", action="store_true", help="leave out dlib's reference row")
    parser.add_argument("--pairs", type=int, default=3000, help="genuine and impostor pairs, each (default 3000)")
    parser.add_argument("--orl", default="../shared/data/orl_faces",
                        help="ORL faces: identity from 3 photos a person, scratch vs transfer from faces")
    parser.add_argument("--no-orl", action="store_true", help="skip the ORL comparison")
    parser.add_argument("--runs-dir", default="runs/bench_faces", help="ORL comparison runs")
    parser.add_argument("--out", default="results/faces")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--run takes NAME=RUN_DIR or NAME=FILE.npz. Received: {item!r}")
        runs[name] = path

    from tf_models.bench.faces import bench_faces, orl_transfer_benchmark

    if not args.no_orl:
        orl = orl_transfer_benchmark(args.orl, args.out, args.runs_dir, "configs/quality_identity.yaml",
                                     backbone=args.backbone)
        print(orl.to_string(index=False))
    table = bench_faces(args.data_root, args.out, runs=runs, backbone=args.backbone, include_dlib=not args.no_dlib,
                        genuine=args.pairs, impostor=args.pairs,
                        command=shlex.join(["python", "scripts/bench_faces.py", *(argv if argv is not None else sys.argv[1:])]))
    print(table.to_string(index=False))
    with open(f"{args.out}/faces.md") as handle:
        print(handle.read().strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())

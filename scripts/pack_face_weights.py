#!/usr/bin/env python
"""Packs a face pretraining run's weights into the form the package ships (6-bit kernels, a few MB).

    python scripts/pack_face_weights.py runs/faces/alexnet_bn_gpu2/face_weights.npz \\
        tf_models/models/weights/alexnet_bn_faces.npz

Prints the sha256 for the backbone's registry row (tf_models/models/backbones.py) and the sizes. Then
re-measure what the packing cost and the gallery threshold, side by side with the float16 run:
``python scripts/bench_faces.py --backbone NAME --run "float16=SOURCE"``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from tf_models.models.backbones import DEFAULT_PACK_LEVELS, pack_face_weights

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a face_weights.npz (a run folder's)")
    parser.add_argument("target", help="the packed .npz to write")
    parser.add_argument("--levels", type=int, default=DEFAULT_PACK_LEVELS,
                        help="largest int8 code of the packed kernels (default %(default)s: 6 bits)")
    args = parser.parse_args(argv)
    report = pack_face_weights(args.source, args.target, args.levels)
    print(f"{report['arrays_packed']} of {report['arrays']} arrays as codes; largest error "
          f"{report['max_relative_error']:.4f} of a channel's peak")
    print(f"{args.target}: {report['bytes_after'] / 1e6:.2f} MB (from {report['bytes_before'] / 1e6:.2f} MB), "
          f"sha256 {report['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Open-set identity, leave one person out: does a stranger come out Unknown?

    python scripts/evaluate_openset.py --run runs/demo/identity_alexnet_bn_scratch \
        --data-dir datasets/students/sample --target-far 0.01

For each person: a gallery of everyone else's training faces, a threshold calibrated on everyone
else's validation faces for the target false-accept rate, then that person's held-out faces must
come out Unknown and the others' must be named. Writes openset.{json,md}, openset_folds.csv,
openset_curve.csv and openset_roc.png under --out; prints FAR and FRR on the last line.
"""

from __future__ import annotations

import argparse
import sys

from tf_models.identity.openset import evaluate_openset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True,
                        help="identity run folder written by scripts/train.py, or faces[:BACKBONE] for the shipped "
                             "face embedder with no training")
    parser.add_argument("--data-dir", required=True, help="students folder (root/<Person Name>/<photos>)")
    parser.add_argument("--target-far", type=float, default=0.01,
                        help="false-accept rate the threshold is calibrated for (default: 0.01)")
    parser.add_argument("--out", default="results/openset", help="output folder (default: results/openset)")
    parser.add_argument("--batch-size", type=int, help="images per embedding batch (default: the run's)")
    args = parser.parse_args(argv)
    result = evaluate_openset(args.run, args.data_dir, target_far=args.target_far, out=args.out,
                              batch_size=args.batch_size)
    s = result.summary
    print(f"target FAR {s['target_far']:g}: FAR {s['far']:.4f} ({s['false_accepts']}/{s['stranger_faces']} strangers), "
          f"FRR {s['frr']:.4f} ({s['false_rejects']}/{s['known_faces']} known), "
          f"closed-set accuracy {s['closed_set_accuracy']:.4f}, mean threshold {s['threshold_mean']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

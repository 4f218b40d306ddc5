#!/usr/bin/env python
"""Release models for a public demo: train the best recipe, write a small release folder the app serves.

    python scripts/make_release.py                     # gender, configs/quality_gender_faces.yaml on the shared CelebA
    python scripts/make_release.py --run-dir runs/release/gender   # release a finished run as it is

Writes tf_models/release/<task>/ (package data: config.yaml, class_names.json, model.int8.npz,
metrics.json, MODEL_CARD.md). `python app_gradio.py` with no arguments serves the runs recorded in
results/best/, else these. The int8 weights are checked against the float32 run before anything
is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quality_gender_faces.yaml", help="the recipe (TrainConfig YAML)")
    parser.add_argument("--data-dir", default="../shared/data/celeba", help="the dataset the recipe trains on")
    parser.add_argument("--run-dir", default=None, help="the run folder (default: runs/release/<task>); "
                                                        "a finished one is released without training")
    parser.add_argument("--out", default=None, help="release folder (default: tf_models/release/<task>)")
    parser.add_argument("--trained-by", default="", help="the command that trained --run-dir, when another one did "
                                                         "(written in the model card)")
    args = parser.parse_args(argv)

    from tf_models.config import TrainConfig
    from tf_models.runs import RELEASES_DIR
    from tf_models.train.release import make_release

    config = TrainConfig.load(args.config)
    config = dataclasses.replace(config, data_dir=args.data_dir,
                                 out=args.run_dir or f"runs/release/{config.task}").validate()
    command = "python scripts/make_release.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        out = make_release(config, args.out or RELEASES_DIR / config.task, command=command.strip(),
                           trained_by=args.trained_by)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"release written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

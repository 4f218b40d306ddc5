#!/usr/bin/env python
"""Face pretraining: trains a registry backbone as a face embedder (the weights="faces" recipe).

    python scripts/pretrain_faces.py --config configs/pretrain_faces.yaml
    python scripts/pretrain_faces.py --config configs/pretrain_faces.yaml --epochs 60 --batch-size 256   # a GPU

Frames every shared face photo with the project's detector and crop (cached), holds whole people
out for evaluation, trains, and writes embedder.keras and face_weights.npz (float16; packed for the package by scripts/pack_face_weights.py: the shipped
format) to the run folder. Run it again after an interruption: it resumes at the last epoch.
Distillation needs dlib's embedding: pip install dlib-bin face_recognition_models.

    python scripts/pretrain_faces.py --export faces_set   # the framed faces + targets, for a torch GPU box

``--export`` writes the photos trained on and their targets to a small folder (about 41 MB) for
``scripts/pretrain_faces_torch.py``: the same recipe on Keras's torch backend, on a machine with a
GPU and PyTorch but no TensorFlow or shared data.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/pretrain_faces.yaml", help="recipe (YAML)")
    parser.add_argument("--run-dir", help="run folder (default: the recipe's)")
    parser.add_argument("--data-root", help="shared data folder holding faces/ and celeba/")
    parser.add_argument("--backbone", help="registry backbone to train")
    parser.add_argument("--loss", help="distill | arcface | cosface | distill+arcface | distill+cosface")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--init-from", help="an earlier run's embedder.keras or face_weights.npz (or the "
                        "package's) to continue from, on a new schedule")
    parser.add_argument("--prepare-only", action="store_true", help="frame the faces (and teacher) and stop")
    parser.add_argument("--export", metavar="DIR", help="write the training faces and their targets to DIR "
                        "(for scripts/pretrain_faces_torch.py) and stop")
    args = parser.parse_args(argv)

    from tf_models.train.face_pretraining import PretrainConfig, load_pretraining_faces, pretrain

    config = PretrainConfig.from_yaml(args.config, run_dir=args.run_dir, data_root=args.data_root,
                                      backbone=args.backbone, loss=args.loss, epochs=args.epochs,
                                      batch_size=args.batch_size, lr=args.lr,
                                      init_from=args.init_from)
    _, faces = load_pretraining_faces(config)
    print(f"framed {len(faces.rows)} photos ({(faces.rows['found'] == 'face').sum()} faces found, the rest "
          f"kept whole), {len(faces.skipped)} unreadable")
    if args.prepare_only:
        return 0
    if args.export:
        from tf_models.train.face_export import export_pretraining_set

        print(f"exported to {export_pretraining_set(faces, config, args.export)}")
        return 0
    run_dir = pretrain(config, faces)
    print(f"face embedder written to {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Face pretraining on a GPU with PyTorch and no TensorFlow: the distill recipe on Keras's torch backend.

    python scripts/pretrain_faces.py --export faces_set        # where TensorFlow and ../shared/data are
    KERAS_BACKEND=torch python scripts/pretrain_faces_torch.py --data faces_set --config configs/pretrain_faces.yaml \\
        --batch-size 256 --lr 0.002 --minutes 7 --init-from tf_models/models/weights/mobilenetv2_faces.npz \\
        --run-dir runs/faces/mobilenetv2_gpu

The recipe is the YAML the TensorFlow script reads, with the same overrides; the training is
``tf_models.train.face_torch`` (what it does and writes is in its docstring). ``--minutes`` fixes the
length by time (the schedule ends at 0 on time however the GPU's speed varies); otherwise the recipe's
epochs. The run folder defaults to runs/faces/BACKBONE_torch and is never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder written by scripts/pretrain_faces.py --export")
    parser.add_argument("--config", default="configs/pretrain_faces.yaml", help="recipe (YAML)")
    parser.add_argument("--run-dir", help="run folder (default: runs/faces/BACKBONE_torch)")
    parser.add_argument("--backbone", help="registry backbone to train")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--minutes", type=float, help="wall-clock budget: the schedule is fitted to it "
                        "(instead of the recipe's epochs)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--init-from", help="a face_weights.npz to start from (a run's, or the package's)")
    parser.add_argument("--eval-every", type=float, default=1.0, help="minutes between held-back evaluations")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports Keras

    from tf_models.train.face_recipe import PretrainConfig
    from tf_models.train.face_torch import pretrain_torch

    config = PretrainConfig.from_yaml(args.config, backbone=args.backbone, epochs=args.epochs,
                                      batch_size=args.batch_size, lr=args.lr, init_from=args.init_from)
    # Not the recipe's run folder: that one is the TensorFlow run's, and a second backend must not overwrite it.
    config.run_dir = args.run_dir or f"runs/faces/{config.backbone}_torch"
    try:
        pretrain_torch(config, args.data, minutes=args.minutes, eval_every=args.eval_every)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())

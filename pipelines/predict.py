"""Predict on new files: `python pipelines/predict.py ckpt_path=RUN/checkpoints/best.ckpt 'files=[/data/x/*.root]' output=scores.root` (same as `physics-tf-predict`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from physics_tf.cli import predict  # noqa: E402

if __name__ == "__main__":
    predict()

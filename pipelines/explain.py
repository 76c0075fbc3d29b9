"""Attention maps of a trained model: `python pipelines/explain.py ckpt_path=...` (same as `physics-tf-explain`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from physics_tf.cli import explain  # noqa: E402

if __name__ == "__main__":
    explain()

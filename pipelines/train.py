"""Train: `python pipelines/train.py [Hydra overrides]` (same as the `physics-tf-train` console script)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from physics_tf.cli import train  # noqa: E402

if __name__ == "__main__":
    train()

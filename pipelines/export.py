"""Export to ONNX: `python pipelines/export.py ckpt_path=... [output=model.onnx]` (same as `physics-tf-export`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from physics_tf.cli import export  # noqa: E402

if __name__ == "__main__":
    export()

"""Generate a JetClass-layout jet dataset with Pythia 8 + FastJet (same as the `physics-tf-generate` script).

    python pipelines/generate.py                    # conf/gen/jets_demo.yaml (QCD vs top, ~1 min on 2 cores)
    python pipelines/generate.py gen=jets_large gen.n_workers=16
    python pipelines/generate.py gen.n_train=1000 gen.force=true

All logic lives in :func:`physics_tf.jets.jetgen.generate_dataset`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from physics_tf.cli import generate  # noqa: E402

if __name__ == "__main__":
    generate()

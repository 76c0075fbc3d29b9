"""Generate a data set (same as the `physics-tf-generate` script); `gen=NAME` picks conf/gen/NAME.yaml.

    python pipelines/generate.py                    # conf/gen/jets_demo.yaml (QCD vs top, ~1 min on 2 cores)
    python pipelines/generate.py gen=jets_large gen.n_workers=16
    python pipelines/generate.py gen=auger_sim      # or gen=lightcurves_sim
    python pipelines/generate.py gen.n_train=1000 gen.force=true

The chosen config's `_target_` names the generator (e.g. :func:`physics_tf.jets.generate.orchestrate.run_generate`);
:func:`physics_tf.cli.generate` calls it with the composed config.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from physics_tf.cli import generate  # noqa: E402

if __name__ == "__main__":
    generate()

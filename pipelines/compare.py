"""Compare runs side by side: `python pipelines/compare.py RUN_DIR... [--keys ...] [--metrics ...] [--csv F]`.

RUN_DIR: run directories (config.yaml + metrics.json), globs, or a Hydra multirun directory; `--wandb ENTITY/PROJECT
--group EXPERIMENT` reads the runs from W&B instead. `--help` lists every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from physics_tf.training.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""Error messages name what the user can look up: the file's own column (not a derived quantity), the row or line,
the value as written; a checkpoint that cannot be evaluated is one line naming the file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from physics_tf.data.errors import InvalidValueError
from physics_tf.jets.features import JetDataConfig, chunk_to_arrays
from physics_tf.jets.readers import make_reader
from physics_tf.jets.writers import write_jetclass_root, write_toptagging_h5
from physics_tf.training.checkpoints import CheckpointError
from physics_tf.training.run import run_evaluate

from conftest import synth_jetclass
from test_pipelines import _cli, compose_train

LEGACY_JETS = Path(__file__).resolve().parent / "data" / "legacy" / "jets_demo.ckpt"


# ------------------------------------------------------------------------------------------- top tagging
def test_toptagging_nan_names_the_file_column_and_entry(tmp_path, toptagging_arrays):
    E, PX, PY, PZ, sig = toptagging_arrays
    E = E.copy()
    E[5, 0] = np.nan  # the derived jet_energy (the sum of the E_i) is NaN too: the column must be blamed
    path = write_toptagging_h5(tmp_path / "nan.h5", E, PX, PY, PZ, sig, n_constituents=12)
    cfg = JetDataConfig(files={}, format="toptagging_h5", labels=["label_QCD", "label_Top"], features="kin",
                        pad_length=12)
    with pytest.raises(InvalidValueError) as err:
        for chunk in make_reader(path, cfg).iterate(0, None, step_size=4):
            chunk_to_arrays(chunk, cfg, source=str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: field 'E_0': "), msg
    assert "entry 5" in msg and "nan" in msg and "jet_energy" not in msg, msg


# ------------------------------------------------------------------------------------------- PLAsTiCC CSV
def _plasticc(tmp_path):
    from physics_tf.lightcurves.io import write_plasticc_csv
    from physics_tf.lightcurves.simulate import simulate

    lc = simulate(6, seed=0)
    lc_path, meta_path = tmp_path / "set.csv", tmp_path / "meta.csv"
    write_plasticc_csv(lc, lc_path, meta_path)
    return lc_path, meta_path


def _spoil(path: Path, line: int, column: str, value: str) -> None:
    rows = path.read_text().splitlines()
    j = rows[0].split(",").index(column)
    fields = rows[line - 1].split(",")
    fields[j] = value
    rows[line - 1] = ",".join(fields)
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("chunk_rows", [7, 1_000_000])  # the bad row in a carried-over object, or in one chunk
def test_plasticc_bad_flux_names_column_line_and_value(tmp_path, chunk_rows):
    from physics_tf.lightcurves.io import read_plasticc_csv

    lc_path, meta_path = _plasticc(tmp_path)
    _spoil(lc_path, 23, "flux", "abc")
    oid = lc_path.read_text().splitlines()[22].split(",")[0]
    with pytest.raises(InvalidValueError) as err:
        read_plasticc_csv(lc_path, meta_path, chunk_rows=chunk_rows)
    msg = str(err.value)
    assert msg.startswith(f"{lc_path}: field 'flux': line 23: object_id {oid}: "), msg
    assert "(found 'abc')" in msg and "np.float64" not in msg, msg


def test_plasticc_blank_lines_keep_line_numbers(tmp_path):
    from physics_tf.lightcurves.io import read_plasticc_csv

    lc_path, meta_path = _plasticc(tmp_path)
    _spoil(lc_path, 9, "passband", "9")
    rows = lc_path.read_text().splitlines()
    lc_path.write_text("\n".join(rows[:4] + [""] + rows[4:]) + "\n")  # the bad row moves to line 10
    with pytest.raises(InvalidValueError, match=r"field 'passband': line 10: .*\(found '9'\)"):
        read_plasticc_csv(lc_path, meta_path, chunk_rows=3)


def test_plasticc_bad_target_names_line_and_value(tmp_path):
    from physics_tf.lightcurves.io import read_metadata_csv

    _, meta_path = _plasticc(tmp_path)
    _spoil(meta_path, 4, "target", "SNIa")
    with pytest.raises(InvalidValueError, match=r"field 'target': line 4: object_id \d+: .*\(found 'SNIa'\)"):
        read_metadata_csv(meta_path)


# ------------------------------------------------------------------------------------------- evaluate
def test_evaluate_merges_bare_data_overrides_into_the_stored_config(tmp_path):
    p, j, lab = synth_jetclass(40, seed=5, classes=(0, 8), max_particles=12)
    test_file = write_jetclass_root(tmp_path / "other_test.root", p, j, lab)
    cfg = compose_train([f"ckpt_path={LEGACY_JETS}", f"+data.files.test=[{test_file}]"], tmp_path / "eval",
                        config_name="evaluate")
    metrics = run_evaluate(cfg)
    assert metrics["num_jets"] == 40


def test_evaluate_on_a_non_physics_tf_checkpoint_is_one_line(tmp_path):
    empty = tmp_path / "empty.ckpt"
    torch.save({}, empty)
    cfg = compose_train([f"ckpt_path={empty}"], tmp_path / "eval", config_name="evaluate")
    with pytest.raises(CheckpointError, match=re.escape(f"{empty}: not a physics_tf checkpoint")):
        run_evaluate(cfg)
    res = _cli(["pipelines/evaluate.py", f"ckpt_path={empty}", f"hydra.run.dir={tmp_path / 'cli'}"])
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("physics_tf: error: ") and str(empty) in lines[-1], res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_unknown_class_code_names_the_metadata_csv(tmp_path):
    """A target code outside data.classes is blamed on the metadata CSV where it is written, not the cached .h5."""
    from physics_tf.data.errors import UnknownLabelError
    from physics_tf.lightcurves.data import LightCurveDataModule
    from physics_tf.lightcurves.io import write_plasticc_csv
    from physics_tf.lightcurves.simulate import simulate

    lc = simulate(12, seed=0)
    codes = sorted(set(lc.meta["target"].tolist()))
    write_plasticc_csv(lc, tmp_path / "set.csv", tmp_path / "meta.csv")
    dm = LightCurveDataModule(files={"test": {"lightcurves": str(tmp_path / "set.csv"),
                                              "metadata": str(tmp_path / "meta.csv")}},
                              classes=codes[1:], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UnknownLabelError) as err:
        dm.prepare_data()
        dm.setup("test")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'meta.csv'}: field 'target': ") and "cached in" in message, message

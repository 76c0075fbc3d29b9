"""Prediction throughput (jets/s): ``physics-tf-predict`` against weaver-core's ``--predict``, on the same files and
the same ParT weights.

    python benchmarks/bench_predict.py [--files 2] [--jets-per-file 2000] [--batch 256] [--threads 1]
                                       [--size small|paper] [--repeats 1] [--json F]

Data: bench_loader's synthetic JetClass-layout ROOT files (~50 particles per jet, up to 150; 13 "kinpid" features
with the same standardisation in both configurations, 4-vectors, pad 128, labels QCD / Tbqq). Model: a ParT
(``--size paper``: the published one, 2.1 M parameters; ``small``: embed [64, 64, 64], 2 + 1 blocks) with random
weights, made as weaver-core's ``ParticleTransformer`` and converted to physics_tf with
``from_weaver_state_dict``: weaver gets the state dict ``.pt``, physics_tf a checkpoint holding the converted
weights and a run config (data=jets_demo on these files, model=part). Both run as the commands a user runs, in
their own processes, one after the other, on the CPU with ``--threads`` threads (``OMP_NUM_THREADS`` and
``torch.set_num_threads``), 0 DataLoader workers, the same batch size, writing ROOT:

* physics_tf: ``pipelines/predict.py ckpt_path=... files=[...] output=pred.root`` (rate: its log line
  "predicted N entries ... (X entries/s)": the predict loop with reading, the network and writing the output);
* weaver-core: ``weaver.train --predict --data-test ... --model-prefix state.pt --predict-output pred.root``
  (rate: its log line "Processed N entries in total (avg. speed X entries/s)": its loop with reading and the
  network; the output is written after it).

Also reported: each command's wall time (imports and start-up included), the load average before and after, and
the largest difference between the two tools' Tbqq scores (the same model on the same jets: ~1e-6).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loader import weaver_yaml, write_files  # noqa: E402

SIZES = {"paper": {}, "small": {"embed_dims": [64, 64, 64], "pair_embed_dims": [32, 32], "num_heads": 4,
                                "num_layers": 2, "num_cls_layers": 1}}
NETWORK = '''import torch
from weaver.nn.model.ParticleTransformer import ParticleTransformer

KW = {kw}


class Wrapper(torch.nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.mod = ParticleTransformer(**kw)

    def forward(self, features, lorentz_vectors, mask):
        return self.mod(features, v=lorentz_vectors, mask=mask)


def get_model(data_config, **kwargs):
    model = Wrapper(input_dim=len(data_config.input_dicts["pf_features"]), num_classes=len(data_config.label_value),
                    **KW)
    return model, {{"input_names": list(data_config.input_names), "output_names": ["softmax"]}}


def get_loss(data_config, **kwargs):
    return torch.nn.CrossEntropyLoss()
'''


def make_models(tmp: Path, files: list[Path], size: str) -> tuple[Path, Path, Path, Path]:
    """(weaver network config, weaver state .pt, weaver data config, physics_tf checkpoint) of one random ParT."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    from physics_tf.config import config_dir
    from physics_tf.jets.part import from_weaver_state_dict
    from physics_tf.training.resolvers import register_resolvers

    register_resolvers()
    kw = SIZES[size]
    network = tmp / "network.py"
    network.write_text(NETWORK.format(kw=repr(kw)))
    data_yaml = tmp / "weaver_data.yaml"
    weaver_yaml(data_yaml)
    sys.path.insert(0, str(tmp))
    import network as weaver_network  # noqa: E402  (the file just written)

    torch.manual_seed(0)
    wrapper = weaver_network.Wrapper(input_dim=13, num_classes=2, **kw).eval()
    state = tmp / "weaver_state.pt"
    torch.save(wrapper.state_dict(), state)

    GlobalHydra.instance().clear()
    model = [f"model.{k}={json.dumps(v)}".replace('"', "") for k, v in kw.items()]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=["experiment=jets_part", "data=jets_demo", *model,
                                          f"data.files.test=[{','.join(map(str, files))}]"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp / "run")
    config = OmegaConf.to_container(cfg, resolve=True)
    weights = from_weaver_state_dict({k.removeprefix("mod."): v for k, v in wrapper.state_dict().items()})
    ckpt = tmp / "physics_tf.ckpt"
    torch.save({"physics_tf_config": config, "state_dict": {f"net.{k}": v for k, v in weights.items()}}, ckpt)
    return network, state, data_yaml, ckpt


def run(cmd: list[str], threads: int, pattern: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "WANDB_MODE": "offline",
           "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    match = re.search(pattern, text)
    if proc.returncode or match is None:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd[:4])} ...\n{text[-3000:]}")
    return {"entries": int(match.group(1)), "jets_s": float(match.group(2)), "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2)
    p.add_argument("--jets-per-file", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    files = write_files(a.files, a.jets_per_file)
    load_before = os.getloadavg()
    out: dict = {"files": a.files, "jets_per_file": a.jets_per_file, "batch": a.batch, "threads": a.threads,
                 "size": a.size, "workers": 0, "runs": {"physics_tf": [], "weaver-core": []}}
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp_:
        tmp = Path(tmp_)
        network, state, data_yaml, ckpt = make_models(tmp, files, a.size)
        ours_cmd = [sys.executable, "pipelines/predict.py", f"ckpt_path={ckpt}",
                    f"files=[{','.join(map(str, files))}]", f"output={tmp / 'ours.root'}", f"batch_size={a.batch}",
                    "num_workers=0", f"hydra.run.dir={tmp / 'ours_run'}", "observers=[jet_pt]"]
        weaver_cmd = [sys.executable, "-c", f"import torch; torch.set_num_threads({a.threads}); "
                      "from weaver.train import main; main()", "--predict", "--data-test", *map(str, files),
                      "--data-config", str(data_yaml), "--network-config", str(network), "--model-prefix", str(state),
                      "--predict-output", str(tmp / "weaver.root"), "--batch-size", str(a.batch), "--gpus", "",
                      "--num-workers", "0", "--log-file", str(tmp / "weaver.log")]
        for _ in range(a.repeats):  # alternate: machine noise hits both
            out["runs"]["physics_tf"].append(run(ours_cmd, a.threads, r"predicted (\d+) entries .*?\(([\d.]+) entries/s\)"))
            out["runs"]["weaver-core"].append(run(weaver_cmd, a.threads,
                                                  r"Processed (\d+) entries in total \(avg. speed ([\d.]+) entries/s\)"))
        import uproot

        ours = uproot.open(tmp / "ours.root")["predictions"].arrays(["score_Tbqq"], library="np")["score_Tbqq"]
        theirs = uproot.open(tmp / "weaver.root")
        theirs = theirs[theirs.keys()[0]].arrays(["score_label_Tbqq"], library="np")["score_label_Tbqq"]
        out["max_abs_score_diff"] = float(np.abs(ours - theirs).max()) if len(ours) == len(theirs) else None
    out["load_average_before"], out["load_average_after"] = load_before, os.getloadavg()
    for tool, rs in out["runs"].items():
        out[tool] = {"jets_s": float(np.median([r["jets_s"] for r in rs])),
                     "wall_s": float(np.median([r["wall_s"] for r in rs])), "entries": rs[0]["entries"]}
    out["ratio_jets_s"] = out["physics_tf"]["jets_s"] / out["weaver-core"]["jets_s"]
    out["ratio_wall"] = out["weaver-core"]["wall_s"] / out["physics_tf"]["wall_s"]
    print(f"{a.files} files x {a.jets_per_file} jets, ParT {a.size}, batch {a.batch}, {a.threads} thread(s), "
          f"load average {load_before[0]:.2f} -> {out['load_average_after'][0]:.2f}")
    for tool in ("physics_tf", "weaver-core"):
        print(f"{tool:<12} {out[tool]['jets_s']:>9,.0f} jets/s in its loop   {out[tool]['wall_s']:6.1f} s wall "
              f"({out[tool]['entries']} jets)")
    print(f"physics_tf / weaver-core: {out['ratio_jets_s']:.2f}x jets/s, {out['ratio_wall']:.2f}x wall; "
          f"max |Δ score| = {out['max_abs_score_diff']}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Check a dataset before training: `python scripts/check_dataset.py dataset=<name> [overrides]`.

Composes conf/check_data.yaml (dataset group + the keys below), builds the dataset.train_split
and dataset.val_split splits with `train=False` (dataset.val_split=null: train only), reads every
file (`level=full`), and prints every problem at once with its file and fix, then the per-class
pixel table. Exit code 0: no errors; 3: errors (data); 2/3 when the dataset cannot be built
(its error is printed as one message, no traceback).

  python scripts/check_dataset.py dataset=isbi dataset.root=/data/isbi
  python scripts/check_dataset.py dataset=camvid weights=median weights_out=camvid_weights.yaml
  python scripts/check_dataset.py dataset=voc dataset.root=/data/VOCdevkit dataset.val_split=null
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from segkit.data.doctor import check_dataset
from segkit.data.problems import CheckReport
from segkit.data.stats import class_weights, format_class_table
from segkit.errors import DataError, run_task
from segkit.run import build_datasets


def class_section(report: CheckReport, class_names: list[str]) -> str:
    """Pixel table of the train masks read, and the classes val lacks (their IoU is undefined)."""
    lines = ["", f"Class pixels over the {report.checked['train']} train masks read:"]
    lines.append(format_class_table(report.counts["train"], class_names))
    val = report.counts.get("val")
    if val is not None and report.checked.get("val"):
        absent = [class_names[c] for c, n in enumerate(val.pixels) if n == 0]
        if absent:
            lines.append(f"val has no pixels of: {', '.join(absent)} (their val IoU is undefined)")
    return "\n".join(lines)


def write_weights(path: Path, method: str, weights: list[float], class_names: list[str]) -> None:
    """Weights as .json, else YAML: {method, class_names, class_weights}."""
    data = {"method": method, "class_names": class_names, "class_weights": weights}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    else:
        OmegaConf.save(OmegaConf.create(data), path)


def weights_section(cfg: DictConfig, report: CheckReport, class_names: list[str]) -> str:
    """Class weights from the train counts as a copy-paste override (and file, if asked)."""
    method = cfg.weights or "median"
    if not any(report.counts["train"].pixels):
        return "\nno class weights: the train masks read hold no labelled pixel"
    weights = [round(w, 4) for w in class_weights(report.counts["train"], method)]
    text = f"\nclass weights ({method}): loss.class_weights=[{','.join(map(str, weights))}]"
    if cfg.weights_out:
        write_weights(Path(cfg.weights_out), method, weights, class_names)
        text += f"\nwritten to {cfg.weights_out}"
    return text


def run(cfg: DictConfig) -> int:
    """Build, check, print; -> process exit code. A dataset that cannot even be built raises
    DataError / ConfigError, which `run_task` prints as one message (exit code 3 / 2)."""
    train_ds, val_ds = build_datasets(cfg, augment_train=False)
    report = check_dataset(train_ds, val_ds, cfg.level)
    print(report.format(max_per_kind=cfg.max_per_kind))
    names = list(train_ds.class_names)
    print(class_section(report, names))
    if cfg.weights or cfg.weights_out:
        print(weights_section(cfg, report, names))
    return DataError.exit_code if report.errors else 0


@hydra.main(version_base="1.3", config_path="../conf", config_name="check_data")
def main(cfg: DictConfig) -> None:
    sys.exit(run_task(run, cfg))


if __name__ == "__main__":
    main()

"""Check a dataset before training: `python -m segkit.check_data dataset=<name> [overrides]`.

Composes conf/check_data.yaml (dataset group + the keys below), builds the train and val splits
with `train=False`, reads every file (`level=full`), and prints every problem at once with its
file and fix, then the per-class pixel table. Exit code 0: no errors; 1: errors, or the dataset
cannot be built (its error is printed as one message, no traceback).

  python -m segkit.check_data dataset=isbi dataset.root=/data/isbi
  python -m segkit.check_data dataset=camvid weights=median weights_out=camvid_weights.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segkit.cli import run_task
from segkit.data.check import CheckReport, check_dataset, class_weights, format_class_table
from segkit.errors import ConfigError


def build_splits(cfg: DictConfig) -> tuple[Any, Any | None]:
    """(train dataset, val dataset or None) from the `_partial_` dataset node, both train=False."""
    missing = sorted(OmegaConf.missing_keys(cfg.dataset))  # `???` values, e.g. "dataset.root"
    if missing:  # a partial instantiate would silently drop them
        overrides = " ".join(f"{k}=..." for k in missing)
        raise ConfigError(f"{', '.join(missing)} not set: add {overrides}")
    make = instantiate(cfg.dataset)
    train_ds = make(split=cfg.train_split, train=False)
    val_ds = make(split=cfg.val_split, train=False) if cfg.val_split else None
    return train_ds, val_ds


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
    DataError / ConfigError, which `run_task` prints as one message (exit code 1)."""
    train_ds, val_ds = build_splits(cfg)
    report = check_dataset(train_ds, val_ds, cfg.level)
    print(report.format(max_per_kind=cfg.max_per_kind))
    names = list(train_ds.class_names)
    print(class_section(report, names))
    if cfg.weights or cfg.weights_out:
        print(weights_section(cfg, report, names))
    return 1 if report.errors else 0


# An absolute path: a relative one would be resolved as a Python package when main() is called
# from another file (scripts/check_dataset.py).
CONF = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="check_data")
def main(cfg: DictConfig) -> None:
    sys.exit(run_task(run, cfg))


if __name__ == "__main__":
    main()

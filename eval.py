"""Evaluate a checkpoint: `python eval.py ckpt=outputs/.../checkpoints/best.pt` (see README.md)."""

import hydra
from omegaconf import DictConfig

from segkit.cli import run_task
from segkit.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    return run_task(evaluate, cfg)


if __name__ == "__main__":
    main()

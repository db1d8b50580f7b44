"""Evaluate a checkpoint: `python eval.py ckpt=outputs/.../checkpoints/best.pt` (see README.md)."""

import sys

import hydra
from omegaconf import DictConfig

from segkit.config.checks import check_command_line
from segkit.errors import exit_on_error, run_task
from segkit.run import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    return run_task(evaluate, cfg)


if __name__ == "__main__":
    exit_on_error(check_command_line, "eval", sys.argv[1:])
    main()

"""Train a segmentation model: `python train.py model=unet` (see README.md)."""

import sys

import hydra
from omegaconf import DictConfig

from segkit.config.checks import check_command_line
from segkit.errors import exit_on_error, run_task
from segkit.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run_task(train, cfg)


if __name__ == "__main__":
    exit_on_error(check_command_line, "train", sys.argv[1:])
    main()

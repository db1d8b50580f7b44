"""Checks before ``train.py`` starts anything, as a Hydra callback (``conf/train.yaml``): a single
run claims its run directory before Hydra writes into it
(`segkit.reporting.run_ownership`); a sweep composes and checks every job's config before its
first job starts, and stops with one message per bad job."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from segkit import dist
from segkit.config.checks import check_train_config
from segkit.engine.spawn import elastic_marker, elastic_restarts
from segkit.errors import ConfigError, UserError, exit_on_error
from segkit.reporting.run_ownership import Heartbeat, claim_run_dir

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def overwrite_flag(cfg: DictConfig) -> bool:
    value = cfg.get("overwrite", False)
    if not isinstance(value, bool):
        raise ConfigError(
            f"overwrite={value!r}: expected true or false; overwrite=true moves an earlier "
            "run's files in hydra.run.dir aside (into replaced/<date>/) and starts over there"
        )
    return value


def claim(config: DictConfig) -> Heartbeat | None:
    """Claim ``hydra.run.dir`` for this run (`segkit.reporting.run_ownership.claim_run_dir`)
    and start its heartbeat. The other ranks of a torchrun job and the restarts of an elastic
    one whose first attempt started training belong to the run that global rank 0 of that
    attempt claimed: they claim nothing."""
    if dist.launcher_rank() != 0:
        return None
    # resolves ${now:...} once: Hydra caches it, so the run directory it makes is this one
    run_dir = Path(str(config.hydra.run.dir))
    marker = elastic_marker(run_dir)
    if elastic_restarts() and marker is not None and marker.is_file():
        return None
    moved = claim_run_dir(
        run_dir, resume=config.get("resume") is not None, overwrite=overwrite_flag(config)
    )
    if moved is not None:
        print(f"overwrite=true: the earlier run's files are now in {moved}", flush=True)
    return Heartbeat(run_dir).start()


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of every job of a basic-sweeper multirun, in launch order; [] for other
    sweepers (Optuna draws its values as it goes: each job checks its own)."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return []
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    loader = GlobalHydra.instance().config_loader()
    parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *task])
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


def job_problem(master: DictConfig, overrides: list[str]) -> str | None:
    """What is wrong with the config of the job with ``overrides``, or None: the checks of
    :func:`check_train_config`, which every job runs again when it starts."""
    loader = GlobalHydra.instance().config_loader()
    hydra_cfg = HydraConfig.instance().cfg
    try:
        cfg = loader.load_sweep_config(master, overrides)
        HydraConfig.instance().set_config(cfg)  # what ${hydra:...} resolves against
        task = copy.deepcopy(cfg)
        with open_dict(task):
            task.pop("hydra")
        check_train_config(task)
        if overwrite_flag(task):
            raise ConfigError(
                "overwrite=true is for single runs: a sweep relaunched into its folder skips its "
                "finished jobs and resumes the others; to start a sweep over, choose a new "
                "hydra.sweep.dir"
            )
    except (UserError, HydraException) as e:
        return str(e)
    except Exception:  # not decidable before the job runs (an interpolation of its run dir)
        return None
    finally:
        HydraConfig.instance().cfg = hydra_cfg
    return None


def check_sweep(config: DictConfig) -> None:
    """Every job's config, before the first job starts: one ConfigError naming each bad job."""
    jobs = sweep_jobs(config)
    common = set.intersection(*map(set, jobs)) if len(jobs) > 1 else set()
    problems = [(i, job, job_problem(config, job)) for i, job in enumerate(jobs)]
    named = [(i, " ".join(o for o in job if o not in common), why) for i, job, why in problems]
    bad = [f"  job {i} ({overrides}): {why}" for i, overrides, why in named if why]
    if bad:
        raise ConfigError(
            f"{len(bad)} of the {len(jobs)} jobs of this sweep have a config that cannot work; "
            "no job was started. Fix the values below and launch the sweep again:\n"
            + "\n".join(bad)
        )


class TrainStartChecks(Callback):
    """``conf/train.yaml``'s Hydra callback. A failed check prints one message and ends the
    process with the error's exit code, before Hydra writes any file."""

    def __init__(self) -> None:
        self.heartbeat: Heartbeat | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.heartbeat = exit_on_error(claim, config)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_on_error(check_sweep, config)

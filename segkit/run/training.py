"""The train task: ``train(cfg)`` runs here or in ``launch.devices`` worker processes; each rank
runs :func:`train_rank`: seed -> data -> model -> Trainer.fit -> files."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from segkit import dist
from segkit.config import schema
from segkit.config.checks import check_train_config
from segkit.engine import signals
from segkit.engine import spawn as launch
from segkit.engine.trainer import Trainer, TrainState
from segkit.errors import Interrupted
from segkit.io import checkpoint as ckpt_io
from segkit.io.weights_file import export_weights
from segkit.reporting.complexity import log_complexity
from segkit.reporting.run_files import (
    RESULT_FILE,
    hparams_of,
    override_keys,
    read_result,
    read_status,
    run_result,
    task_overrides,
    write_config,
    write_status,
)
from segkit.reporting.run_ownership import check_not_live
from segkit.reporting.sweep_summary import finished_result
from segkit.run.building import (
    build_tracker,
    build_trainer,
    check_loggers,
    load_resume,
    resume,
    run_finished,
    seed_everything,
)
from segkit.run.calibration import calibrate_checkpoint

log = logging.getLogger("segkit")


def train(cfg: DictConfig) -> float:
    """Train as configured; returns the best validation mIoU (what sweepers optimise)."""
    check_train_config(cfg)
    check_loggers(cfg)  # a missing optional package stops here, before any work
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # a relaunched sweep: skip or resume
        check_not_live(run_dir)  # (a single run claimed its directory before Hydra wrote there)
        done = finished_result(run_dir)
        if done is not None:
            log.info("job already finished in %s (best mIoU %.4f)", run_dir, done["best_miou"])
            return done["best_miou"]
        if cfg.resume is None and list(run_dir.glob(f"{ckpt_io.CKPT_DIR}/*.pt")):
            cfg.resume = "auto"
    dist.adopt_slurm_tasks()  # hydra/launcher=slurm with tasks_per_node x nodes > 1
    devices = dist.resolve_devices(cfg.launch.devices, cfg.launch.accelerator)
    try:
        if devices > 1 and not dist.launched_by_torchrun():
            plain = OmegaConf.to_container(cfg, resolve=True)  # ${hydra:...} only resolves here
            launch.launch_workers(_train_plain, plain, run_dir, devices)
            return read_result(run_dir)["best_miou"]
        return train_rank(cfg, run_dir)
    except Interrupted:
        if signals.preempted() and dist.launcher_rank() == 0:  # submitit's signal: requeue
            requeue_preempted(run_dir)  # the process ends there, unless submitit refuses
        elif signals.preempted() or signals.requeued_by_slurm():  # the other ranks of a job
            signals.end_for_requeue()  # that submitit requeues; scontrol requeue's SIGTERM
        raise


def _train_plain(plain: dict, run_dir: Path) -> float:
    """Entry of a worker of ``launch.devices=N`` (module level, so it pickles)."""
    return train_rank(OmegaConf.create(plain), run_dir)


def train_rank(cfg: DictConfig, run_dir: Path) -> float:
    """Train in this process: one rank of a DDP job, or the only process."""
    info = dist.init(cfg.launch.accelerator, timeout_s=cfg.launch.dist_timeout_s)
    out_dir = None  # rank 0 alone writes the run's files
    try:
        run_dir = launch.shared_run_dir(run_dir, info)
        out_dir = run_dir if info.is_main else None
        if launch.elastic_restarts() and cfg.resume is None:  # torchrun --max-restarts
            log.warning(
                "elastic restart %d: resuming from the furthest checkpoint",
                launch.elastic_restarts(),
            )
            cfg.resume = "auto"
        return _train(cfg, run_dir, out_dir, info)
    except Exception as e:
        if out_dir is not None and out_dir.is_dir():
            kind = {"Interrupted": "interrupted", "DivergedError": "diverged"}
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
            write_status(out_dir, kind.get(type(e).__name__, "failed"), reason=reason[:500])
        raise
    finally:
        dist.teardown()


def _train(cfg: DictConfig, run_dir: Path, out_dir: Path | None, info: dist.DistInfo) -> float:
    """seed -> data -> model -> loss/optimizer/schedule -> DDP -> resume -> fit -> result.
    Rank 0 alone writes the run's files (``out_dir`` is None on the other ranks)."""
    t0 = time.time()
    resume_from = load_resume(cfg, run_dir, info)
    if resume_from is not None and run_finished(resume_from[1], cfg):
        if (run_dir / RESULT_FILE).is_file():
            return _already_finished(resume_from[1], out_dir)
        log.warning(  # stopped while finishing: finish it now
            "the run finished training (step %d) but not its finishing (calibration, "
            "best.safetensors, plots, result.json): finishing it now",
            resume_from[1]["step"],
        )
    return _train_and_finish(cfg, run_dir, out_dir, info, resume_from, t0)


def _already_finished(ckpt: dict, out_dir: Path | None) -> float:
    """A resume of a finished run: every file is left as it is (status.json says finished)."""
    log.info(
        "the run already finished (epoch %d, step %d); nothing to do", ckpt["epoch"], ckpt["step"]
    )
    if out_dir is not None and (read_status(out_dir) or {}).get("status") != "finished":
        # the directory's claim marked it running: it is the finished run it was
        state = TrainState.from_checkpoint(ckpt)
        write_status(out_dir, "finished", **finished_fields(state, out_dir))
    return ckpt["best_miou"]


def _train_and_finish(
    cfg: DictConfig,
    run_dir: Path,
    out_dir: Path | None,
    info: dist.DistInfo,
    resume_from: tuple | None,
    t0: float,
) -> float:
    """The run from ``resume_from`` (or from the start) to its end, then its finishing."""
    seed_everything(cfg.seed)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    if out_dir is not None:
        write_config(run_config, out_dir)
        write_status(out_dir, "running", **restart_record(out_dir))
        ckpt_io.tidy_checkpoint_dir(out_dir / ckpt_io.CKPT_DIR)
    dist.log_devices(info)
    trainer, model = build_trainer(cfg, info, out_dir=out_dir, run_config=run_config)
    run_ids = resume(trainer, *resume_from) if resume_from is not None else {}
    report = log_complexity(model, cfg.dataset.input_shape)
    if out_dir is not None:
        trainer.tracker = build_tracker(cfg, trainer, out_dir, run_config, run_ids)
    with signals.StopRequest() as stop:  # SIGINT / SIGTERM / submitit's: save, stop after the step
        trainer.stop = stop
        try:
            state = trainer.fit()
        except Exception:
            trainer.tracker.close()  # the loggers' runs end as not finished, with what is unsent
            raise
    if out_dir is not None:
        with signals.StopRaises(FINISHING.format(best=out_dir / ckpt_io.CKPT_DIR / ckpt_io.BEST)):
            finish_run(trainer, out_dir, run_config, run_result(state, time.time() - t0, report))
    log.info(
        "best val mIoU %.4f at epoch %d; run dir %s", state.best_miou, state.best_epoch, run_dir
    )
    return state.best_miou


# what a stop after the loop says (segkit.engine.signals.StopRaises)
FINISHING = (
    "after training, while finishing the run (calibrating best.pt, writing best.safetensors, "
    "the plots and result.json): the trained checkpoints are intact ({best}); run the command "
    "again with resume=auto to finish the run (it trains nothing more), or calibrate the "
    "checkpoint alone with `python scripts/calibrate.py {best} <out.pt>`"
)


def requeue_preempted(run_dir: Path) -> None:
    """Under submitit, after its time-limit / preemption signal stopped the run (the interrupt
    checkpoint is saved): mark status.json ``requeued`` (the next attempt counts it, see
    :func:`restart_record`) and hand the job back to submitit, which requeues it and ends this
    process. If submitit will not (timed out ``max_num_timeout`` times) the run stays
    interrupted; relaunching the sweep resumes it."""
    reason = (read_status(run_dir) or {}).get("reason", "")
    write_status(run_dir, "interrupted", reason=reason, requeued=True)
    log.warning("requeuing the job through submitit; the next attempt resumes in %s", run_dir)
    try:
        signals.requeue()
    except Exception as e:  # submitit's UncompletedJobError
        log.error("submitit did not requeue the job: %s", e)
        write_status(run_dir, "interrupted", reason=reason, requeue_refused=str(e)[:300])


def restart_record(run_dir: Path) -> dict[str, Any]:
    """For status.json after a restart (torchrun's ``--max-restarts``; a requeue after a time
    limit or preemption, by submitit or by SLURM itself): how many, and why the last attempt
    ended."""
    previous = read_status(run_dir) or {}
    ended = previous.get("reason") or f"status {previous.get('status')!r}"
    if launch.elastic_restarts():
        count = launch.elastic_restarts()
        cause = previous.get("reason") or f"a rank died (status was {previous.get('status')!r})"
    elif previous.get("requeued") or signals.slurm_requeues():
        count = previous.get("restarts", 0) + 1
        by = "submitit" if previous.get("requeued") else "SLURM"
        cause = f"requeued by {by} after {ended}"
    else:
        return {}
    log.warning("restart %d after: %s", count, cause)
    return {"restarts": count, "restart_cause": cause}


def finish_run(trainer: Trainer, out_dir: Path, run_config: dict, result: dict) -> None:
    """Rank 0 at the end: with ``calibrate.enabled``, the logit biases of ``best.pt``
    (`segkit.run.calibration`); ``best.safetensors`` (the best weights to share); hparams,
    plots, result.json and the loggers' artifacts (tracker); status.json."""
    best = out_dir / ckpt_io.CKPT_DIR / ckpt_io.BEST
    calibrate = schema.build(schema.CalibrateOptions, run_config.get("calibrate"))
    if calibrate.enabled and best.is_file():
        record = calibrate_checkpoint(
            best,
            trainer.info.device,
            batch_size=run_config["loader"].get("val_batch_size") or 4,
            num_workers=run_config["loader"]["num_workers"],
            max_images=calibrate.max_images,
        )
        result["calibrated_val_miou"] = record["val_miou"]
    if best.is_file():
        export_weights(best, best.with_suffix(".safetensors"))
    overrides = task_overrides(out_dir)  # .hydra/overrides.yaml; [] outside Hydra
    trainer.tracker.finish(
        hparams_of(run_config, overrides),
        result,
        varied=override_keys(overrides),
        artifacts=[best.with_suffix(".safetensors")] if best.is_file() else [],
    )
    write_status(out_dir, "finished", **finished_fields(trainer.state, out_dir))


def finished_fields(state: Any, out_dir: Path) -> dict[str, Any]:
    """What status.json says of a finished run (``TrainState``)."""
    return {
        "epoch": state.epoch,
        "step": state.step,
        "best_miou": state.best_miou,
        "best_epoch": state.best_epoch,
        "best_checkpoint": out_dir / ckpt_io.CKPT_DIR / ckpt_io.BEST,
    }

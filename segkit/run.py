"""The one module that reads the config: instantiate -> (DDP) -> Trainer.

``train(cfg)`` is what ``train.py`` calls: it either trains in this process, or starts
``trainer.devices`` worker processes that each run :func:`fit` on the already-resolved
config and the one run directory Hydra made.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from segkit import checkpoint as ckpt_io
from segkit import dist
from segkit.errors import ConfigError
from segkit.optim import param_groups
from segkit.trainer import Trainer, TrainerConfig

log = logging.getLogger("segkit")

RESULT_FILE = "result.json"


# --------------------------------------------------------------------------- entry points
def train(cfg: DictConfig) -> float:
    """Train as configured; returns the best validation mIoU (what sweepers optimise)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    devices = resolve_devices(cfg.trainer.devices, cfg.trainer.accelerator)
    if devices > 1 and not dist.launched_by_torchrun():
        return launch_workers(cfg, run_dir, devices)
    return fit(cfg, run_dir)


def resolve_devices(devices: Any, accelerator: str) -> int:
    """``trainer.devices``: an int, or ``auto`` = every visible GPU (1 on CPU)."""
    if devices == "auto":
        use_cuda = accelerator in ("auto", "cuda") and torch.cuda.is_available()
        return torch.cuda.device_count() if use_cuda else 1
    try:
        n = int(devices)
    except (TypeError, ValueError):
        raise ConfigError(
            f"trainer.devices={devices!r}: expected a positive int or 'auto'"
        ) from None
    if n < 1:
        raise ConfigError(f"trainer.devices={n}: expected >= 1")
    if accelerator == "cuda" and n > torch.cuda.device_count():
        raise ConfigError(
            f"trainer.devices={n} but only {torch.cuda.device_count()} CUDA devices are visible "
            "(CUDA_VISIBLE_DEVICES); lower trainer.devices"
        )
    return n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_workers(cfg: DictConfig, run_dir: Path, n: int) -> float:
    """Start ``n`` DDP processes on this machine over the resolved config.

    ``torch.multiprocessing`` joins them and, if one raises, stops the rest and re-raises
    with that rank's traceback, so no rank is left waiting in a collective.
    """
    import torch.multiprocessing as mp

    plain = OmegaConf.to_container(cfg, resolve=True)  # ${hydra:...} only resolves here
    port = _free_port()
    log.info("starting %d worker processes (DDP, master port %d)", n, port)
    try:
        mp.start_processes(
            _worker, args=(plain, str(run_dir), n, port), nprocs=n, start_method="spawn"
        )
    except mp.ProcessRaisedException as e:
        # the message holds the rank's traceback; keep it, and lead with its last line
        last = [ln for ln in str(e).splitlines() if ln.strip()][-1]
        raise RuntimeError(f"rank {e.error_index} failed: {last}\n{e}") from None
    return read_result(run_dir)["best_miou"]


def _worker(local_rank: int, plain: dict, run_dir: str, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    _setup_worker_logging(Path(run_dir), local_rank)
    fit(OmegaConf.create(plain), Path(run_dir))


def _setup_worker_logging(run_dir: Path, rank: int) -> None:
    """Spawned processes do not inherit Hydra's logging: rank 0 appends to the run's log."""
    root = logging.getLogger()
    root.handlers.clear()
    fmt = logging.Formatter(f"[%(asctime)s][%(name)s][%(levelname)s][rank{rank}] - %(message)s")
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    root.addHandler(console)
    if rank == 0:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


# --------------------------------------------------------------------------- one process
def fit(cfg: DictConfig, run_dir: Path) -> float:
    """Train in this process (one rank of a DDP job or the only process)."""
    info = dist.init(cfg.trainer.accelerator)
    try:
        run_dir = _shared_run_dir(run_dir, info)
        return _fit(cfg, run_dir, info)
    finally:
        dist.teardown()


def _fit(cfg: DictConfig, run_dir: Path, info: dist.DistInfo) -> float:
    t0 = time.time()
    seed_everything(cfg.seed)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        if info.distributed:
            log.info("world size %d, backend %s", info.world_size, torch.distributed.get_backend())
    devices = dist.all_gather_object(str(info.device))
    if info.distributed:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        log.info(
            "rank -> device: %s%s",
            ", ".join(f"{r}: {d}" for r, d in enumerate(devices)),
            f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "",
        )
    train_ds, val_ds = build_datasets(cfg, run_dir if info.is_main else None)
    train_loader, val_loader = build_loaders(cfg, train_ds, val_ds, info)
    model = build_model(cfg, info)
    loss_fn = build_loss(cfg, train_ds).to(info.device)
    optimizer = instantiate(cfg.optimizer)(params=param_groups(model))
    trainer_cfg = TrainerConfig(**OmegaConf.to_container(cfg.trainer, resolve=True))
    per_epoch = len(train_loader)
    if trainer_cfg.limit_train_batches is not None:
        per_epoch = min(per_epoch, trainer_cfg.limit_train_batches)
    scheduler = instantiate(cfg.scheduler)(
        optimizer, total_steps=cfg.trainer.max_epochs * per_epoch, steps_per_epoch=per_epoch
    )
    trainer = Trainer(
        trainer_cfg,
        model=wrap_ddp(model, cfg, info),
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        val_loader=val_loader,
        info=info,
        run_dir=run_dir,
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    resume_from(trainer, cfg.trainer.resume, run_dir, info)
    report = model_report(model, cfg)
    if info.is_main:
        trainer.writer = make_writer(run_dir, trainer.state.step)
    state = trainer.fit()
    result = {
        "best_miou": state.best_miou,
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "steps": state.step,
        "duration_s": round(time.time() - t0, 2),
        "status": "completed",
        "last": state.history[-1] if state.history else None,
        "complexity": report,
    }
    if info.is_main:
        finish_writer(trainer.writer, cfg, result)
        (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
        log.info(
            "best val mIoU %.4f at epoch %d; run dir %s", state.best_miou, state.best_epoch, run_dir
        )
    return state.best_miou


def _shared_run_dir(run_dir: Path, info: dist.DistInfo) -> Path:
    """Under torchrun every rank ran Hydra; all adopt rank 0's run directory and drop the
    (empty) one their own Hydra made, so a job has exactly one run directory."""
    if not info.distributed:
        return run_dir
    main_dir = Path(dist.broadcast_object(str(run_dir)))
    if not info.is_main:
        for h in list(logging.getLogger().handlers):
            if isinstance(h, logging.FileHandler):
                logging.getLogger().removeHandler(h)
                h.close()
        logging.getLogger().setLevel(logging.WARNING)
        if run_dir.resolve() != main_dir.resolve() and _only_hydra_files(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
    return main_dir


def _only_hydra_files(d: Path) -> bool:
    return d.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in d.iterdir())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- builders
def build_datasets(cfg: DictConfig, run_dir: Path | None):
    """Train and val datasets from the ``dataset`` partial, checked before the first step."""
    from segkit.data.check import prepare_datasets

    make = instantiate(cfg.dataset)
    train_ds = make(split=cfg.data.train_split, train=True)
    val_ds = make(split=cfg.data.val_split, train=False)
    prepare_datasets(train_ds, val_ds, level=cfg.data.check, run_dir=run_dir)
    return train_ds, val_ds


def _seed_worker(worker_id: int) -> None:
    # Samples draw from their own (seed, epoch, index) generator; this only keeps any
    # library that uses numpy's global RNG from repeating the same stream in every worker.
    np.random.seed(torch.initial_seed() % 2**32)


def build_loaders(cfg: DictConfig, train_ds, val_ds, info: dist.DistInfo):
    d = cfg.data
    per_rank = d.batch_size
    if len(train_ds) < per_rank * info.world_size:
        raise ConfigError(
            f"the train split has {len(train_ds)} samples, fewer than data.batch_size={per_rank} "
            f"x {info.world_size} process(es); lower data.batch_size"
        )
    sampler = DistributedSampler(
        train_ds,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
    )
    common = dict(
        num_workers=d.num_workers,
        pin_memory=info.device.type == "cuda",
        worker_init_fn=_seed_worker,
    )
    train_loader = DataLoader(
        train_ds, batch_size=per_rank, sampler=sampler, drop_last=True, **common
    )
    val_loader = DataLoader(
        val_ds,
        batch_size=d.val_batch_size,
        sampler=dist.ShardSampler(len(val_ds), info.rank, info.world_size),
        **common,
    )
    return train_loader, val_loader


def build_model(cfg: DictConfig, info: dist.DistInfo) -> torch.nn.Module:
    """The model from ``cfg.model`` (``init_from`` is ours: fine-tuning weights, not a kwarg)."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    init_from = model_cfg.pop("init_from", None)
    model = instantiate(model_cfg)
    if init_from:
        from segkit.weights import load_weights

        log.info("model.init_from: %s", load_weights(model, init_from))
    if cfg.trainer.sync_bn and info.distributed:
        if info.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.info("trainer.sync_bn: skipped, SyncBatchNorm needs CUDA (device %s)", info.device)
    return model.to(info.device)


def wrap_ddp(model: torch.nn.Module, cfg: DictConfig, info: dist.DistInfo) -> torch.nn.Module:
    if cfg.trainer.compile:
        model = torch.compile(model)
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    # a frozen encoder gets no gradients for some epochs: DDP must not wait for them
    return DDP(model, device_ids=ids, find_unused_parameters=cfg.trainer.freeze_epochs > 0)


def build_loss(cfg: DictConfig, train_ds) -> torch.nn.Module:
    """The loss; ``loss.class_weights=auto`` is computed from the train masks here."""
    loss_cfg = OmegaConf.to_container(cfg.loss, resolve=True)
    weights = loss_cfg.get("class_weights")
    if isinstance(weights, str):
        if weights not in ("auto", "median", "inverse"):
            raise ConfigError(
                f"loss.class_weights={weights!r}: expected null, a list of {train_ds.num_classes} "
                "floats, or auto (median frequency) / median / inverse"
            )
        from segkit.data.check import auto_class_weights

        method = "median" if weights == "auto" else weights
        loss_cfg["class_weights"] = auto_class_weights(train_ds, method)
        log.info(
            "loss.class_weights=%s -> %s", weights, [round(w, 4) for w in loss_cfg["class_weights"]]
        )
    return instantiate(loss_cfg)


def resume_from(trainer: Trainer, resume: str | None, run_dir: Path, info: dist.DistInfo) -> None:
    path = ckpt_io.resolve_resume(resume, run_dir)
    if path is None:
        return
    ckpt = ckpt_io.load(path, map_location=info.device)
    trainer.load_state(ckpt)
    log.info(
        "resumed from %s at epoch %d, step %d (saved by %d process(es))",
        path,
        ckpt["epoch"],
        ckpt["step"],
        ckpt.get("world_size", 1),
    )


def model_report(model: torch.nn.Module, cfg: DictConfig) -> dict | None:
    """Parameters and FLOPs at the training input size, logged once."""
    from segkit.complexity import complexity_report, format_report

    h, w = cfg.dataset.input_shape
    try:
        report = complexity_report(model, (h, w))
    except Exception as e:  # a model the FLOP counter cannot trace must not stop training
        log.warning("complexity report failed: %s", e)
        return None
    log.info("model: %s", format_report(report))
    return report


# --------------------------------------------------------------------------- logging
def make_writer(run_dir: Path, step: int):
    """TensorBoard writer in ``run_dir/tb``. ``purge_step`` drops events a killed run wrote
    after its last checkpoint, so a resumed curve continues without overlap."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"), purge_step=step + 1 if step > 0 else None)


def hparams_of(cfg: DictConfig) -> dict[str, Any]:
    """The hyperparameters a sweep varies, flattened for TensorBoard's HParams plugin."""
    flat = {
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "loss": cfg.loss._target_.rsplit(".", 1)[-1],
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1],
        "lr": cfg.optimizer.lr,
        "batch_size": cfg.data.batch_size,
        "max_epochs": cfg.trainer.max_epochs,
        "precision": cfg.trainer.precision,
        "seed": cfg.seed,
    }
    for key in ("backbone", "base_channels"):
        if key in cfg.model:
            flat[f"model.{key}"] = cfg.model[key]
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat.items()}


def finish_writer(writer, cfg: DictConfig, result: dict) -> None:
    """Log hparams + final metrics into the run's one event stream, then close it."""
    from torch.utils.tensorboard.summary import hparams

    metrics = {"hparam/best_miou": result["best_miou"], "hparam/best_epoch": result["best_epoch"]}
    hp = hparams_of(cfg)
    if result.get("complexity"):
        hp["params_M"] = result["complexity"]["params_total"] / 1e6
        hp["gflops"] = result["complexity"]["flops"] / 1e9
    for summary in hparams(hp, metrics):
        writer.file_writer.add_summary(summary)
    for k, v in metrics.items():
        writer.add_scalar(k, v, 0)
    writer.close()


def read_result(run_dir: Path) -> dict:
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        raise RuntimeError(f"training finished without writing {path}; see {run_dir}/train.log")
    return json.loads(path.read_text())

"""The one module that reads the config: the builders, and the two tasks.

``train(cfg)`` (``train.py``) trains in this process, or starts ``trainer.devices`` worker
processes (``segkit.dist``) that each run :func:`train_rank` on the resolved config and the
one run directory Hydra made. ``evaluate(cfg)`` (``eval.py``) scores a checkpoint at the
images' original resolution. Everything else receives plain values and objects.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from segkit import checkpoint as ckpt_io
from segkit import dist
from segkit.complexity import log_complexity
from segkit.errors import RENAMED_KEYS, ConfigError, renamed_key_error
from segkit.metrics import ConfusionMatrix, format_table
from segkit.metrics import evaluate as evaluate_model
from segkit.optim import param_groups
from segkit.tracking import Tracker, hparams_of, read_result, run_result, write_config
from segkit.trainer import Trainer

log = logging.getLogger("segkit")

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# trainer.* keys read here (launching, devices, resume); the rest are the Trainer's loop keys
LAUNCH_KEYS = ("accelerator", "devices", "sync_bn", "compile", "resume")
# dataset.* keys that are not constructor arguments of the dataset classes
DATASET_RUN_KEYS = ("train_split", "val_split", "check")


# --------------------------------------------------------------------------- config checks
def check_config(cfg: DictConfig) -> None:
    """Stop on old key names that came in through config files (experiments, own yamls)."""
    for old in ("data", *RENAMED_KEYS):
        if OmegaConf.select(cfg, old, default=None, throw_on_missing=False) is not None:
            raise renamed_key_error(old)


# --------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> float:
    """Train as configured; returns the best validation mIoU (what sweepers optimise)."""
    check_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    devices = dist.resolve_devices(cfg.trainer.devices, cfg.trainer.accelerator)
    if devices > 1 and not dist.launched_by_torchrun():
        plain = OmegaConf.to_container(cfg, resolve=True)  # ${hydra:...} only resolves here
        dist.launch_workers(_train_plain, plain, run_dir, devices)
        return read_result(run_dir)["best_miou"]
    return train_rank(cfg, run_dir)


def _train_plain(plain: dict, run_dir: Path) -> float:
    """Entry of a spawned worker (module level, so it pickles)."""
    return train_rank(OmegaConf.create(plain), run_dir)


def train_rank(cfg: DictConfig, run_dir: Path) -> float:
    """Train in this process: one rank of a DDP job, or the only process."""
    info = dist.init(cfg.trainer.accelerator)
    try:
        return _train(cfg, dist.shared_run_dir(run_dir, info), info)
    finally:
        dist.teardown()


def _train(cfg: DictConfig, run_dir: Path, info: dist.DistInfo) -> float:
    """seed -> data -> model -> loss/optimizer/schedule -> DDP -> resume -> fit -> result.
    Rank 0 alone writes the run's files (``out_dir`` is None on the other ranks)."""
    t0 = time.time()
    out_dir = run_dir if info.is_main else None
    seed_everything(cfg.seed)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    if out_dir is not None:
        write_config(run_config, out_dir)
    dist.log_devices(info)
    train_ds, val_ds = build_datasets(cfg)
    check_datasets(cfg, train_ds, val_ds, out_dir)
    train_loader, val_loader = build_loaders(cfg, train_ds, val_ds, info)
    model = build_model(cfg, info)
    optimizer = build_optimizer(cfg, model)
    trainer = Trainer(
        compile_and_wrap(model, cfg, info),
        build_loss(cfg, train_ds).to(info.device),
        optimizer,
        build_scheduler(cfg, optimizer, len(train_loader)),
        train_loader,
        val_loader,
        labels=val_ds.labels,
        info=info,
        ckpt_dir=out_dir and out_dir / ckpt_io.CKPT_DIR,
        run_config=run_config,
        tracker=None,
        **loop_kwargs(cfg, show_progress=out_dir is not None),
    )
    resume(trainer, cfg.trainer.resume, run_dir, info)
    report = log_complexity(model, cfg.dataset.input_shape)
    if out_dir is not None:
        trainer.tracker = Tracker(out_dir, val_ds.labels, trainer.state.step)
    state = trainer.fit()
    if trainer.tracker is not None:
        trainer.tracker.finish(hparams_of(run_config), run_result(state, time.time() - t0, report))
    log.info(
        "best val mIoU %.4f at epoch %d; run dir %s", state.best_miou, state.best_epoch, run_dir
    )
    return state.best_miou


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loop_kwargs(cfg: DictConfig, show_progress: bool) -> dict[str, Any]:
    """The Trainer's loop keys: ``cfg.trainer`` without the launch keys."""
    loop = OmegaConf.to_container(cfg.trainer, resolve=True)
    loop = {k: v for k, v in loop.items() if k not in LAUNCH_KEYS}
    loop["progress_bar"] = bool(loop["progress_bar"]) and show_progress
    return loop


# --------------------------------------------------------------------------- data
def dataset_factory(node: DictConfig | Mapping) -> Callable[..., Any]:
    """``make(split=..., train=...)`` from a ``dataset`` config node (the ``_partial_``
    constructor without segkit's own keys ``train_split``, ``val_split`` and ``check``)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)  # `???` values stay "???"
    missing = sorted(f"dataset.{k}" for k, v in node.items() if v == "???")
    if missing:  # a partial instantiate would silently drop them
        raise ConfigError(
            f"{', '.join(missing)} not set: add {' '.join(f'{k}=...' for k in missing)}"
        )
    kwargs = {k: v for k, v in node.items() if k not in DATASET_RUN_KEYS}
    return instantiate(kwargs)


def build_datasets(cfg: DictConfig, *, augment_train: bool = True):
    """``(train dataset, val dataset or None)``; val is None when ``dataset.val_split`` is null."""
    make = dataset_factory(cfg.dataset)
    train_ds = make(split=cfg.dataset.train_split, train=augment_train)
    val_split = cfg.dataset.val_split
    return train_ds, make(split=val_split, train=False) if val_split else None


def check_datasets(cfg: DictConfig, train_ds, val_ds, out_dir: Path | None) -> None:
    """The dataset check before the first step (``dataset.check``); in skip mode the bad
    samples it reports are removed here and listed in ``bad_samples.txt``."""
    from segkit.data.check import check_for_training, write_bad_samples

    if val_ds is None:
        raise ConfigError("dataset.val_split is null: training needs a val split")
    report, drop = check_for_training(train_ds, val_ds, cfg.dataset.check)
    if not drop:
        return
    if out_dir is not None:
        write_bad_samples(report, out_dir / "bad_samples.txt")
    for split, ds in (("train", train_ds), ("val", val_ds)):
        if drop.get(split):
            ds.remove_samples(drop[split])
    summary = ", ".join(f"{s}: {len(i)} of {report.sizes[s]}" for s, i in drop.items() if i)
    log.warning("dataset.on_bad_sample=skip: removed bad samples %s (bad_samples.txt)", summary)


def build_loaders(cfg: DictConfig, train_ds, val_ds, info: dist.DistInfo):
    """Train loader (DistributedSampler, drop_last) and val loader (ShardSampler, no padding)."""
    lc = cfg.loader
    if len(train_ds) < lc.batch_size * info.world_size:
        raise ConfigError(
            f"the train split has {len(train_ds)} samples, fewer than loader.batch_size="
            f"{lc.batch_size} x {info.world_size} process(es); lower loader.batch_size"
        )
    sampler = DistributedSampler(
        train_ds, info.world_size, info.rank, seed=cfg.seed, drop_last=True
    )
    pin = info.device.type == "cuda"
    common = dict(num_workers=lc.num_workers, pin_memory=pin, worker_init_fn=dist.seed_worker)
    train_loader = DataLoader(
        train_ds, batch_size=lc.batch_size, sampler=sampler, drop_last=True, **common
    )
    val_sampler = dist.ShardSampler(len(val_ds), info.rank, info.world_size)
    val_loader = DataLoader(val_ds, batch_size=lc.val_batch_size, sampler=val_sampler, **common)
    return train_loader, val_loader


# --------------------------------------------------------------------------- model
def instantiate_model(model_cfg: DictConfig | Mapping, *, from_checkpoint: bool = False):
    """A model from a ``model`` config node. ``init_from`` is segkit's fine-tuning option, not a
    constructor argument: it is applied here. ``from_checkpoint``: the weights come from the
    checkpoint, so nothing pretrained or ``init_from`` is loaded."""
    if isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    kwargs = dict(model_cfg)
    init_from = kwargs.pop("init_from", None)
    if from_checkpoint:
        kwargs.update(
            {k: v for k, v in (("pretrained", False), ("weights_path", None)) if k in kwargs}
        )
    model = instantiate(kwargs)
    if init_from and not from_checkpoint:
        from segkit.weights import load_weights

        log.info("model.init_from: %s", load_weights(model, init_from))
    return model


def build_model(cfg: DictConfig, info: dist.DistInfo) -> nn.Module:
    """``cfg.model`` on this rank's device (SyncBatchNorm under DDP on CUDA with sync_bn)."""
    model = instantiate_model(cfg.model)
    if cfg.trainer.sync_bn and info.distributed:
        if info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.info("trainer.sync_bn: skipped, SyncBatchNorm needs CUDA (device %s)", info.device)
    return model.to(info.device)


def compile_and_wrap(model: nn.Module, cfg: DictConfig, info: dist.DistInfo) -> nn.Module:
    """``torch.compile`` when ``trainer.compile``, then DDP when the job has several ranks."""
    if cfg.trainer.compile:
        model = torch.compile(model)
    # a frozen encoder gets no gradients for some epochs: DDP must not wait for them
    return dist.wrap_ddp(model, info, find_unused_parameters=cfg.trainer.freeze_epochs > 0)


def model_config_names() -> list[str]:
    """The model config names: the stems of ``conf/model/*.yaml``, sorted."""
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def compose_model_config(name: str, num_classes: int, overrides: Iterable[str] = ()) -> dict:
    """``model=<name>`` composed with Hydra outside any ``@hydra.main`` app, resolved with
    ``dataset.num_classes=num_classes``; ``overrides`` like ``["model.pretrained=false"]``."""
    from hydra import compose, initialize_config_dir

    if name not in model_config_names():
        raise ConfigError(f"model config {name!r} not found: choose one of {model_config_names()}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(
            overrides=[f"+model={name}", f"+dataset.num_classes={num_classes}", *overrides]
        )
    return OmegaConf.to_container(cfg.model, resolve=True)


# --------------------------------------------------------------------------- loss, optim
def build_loss(cfg: DictConfig, train_ds) -> nn.Module:
    """The loss; ``loss.class_weights=auto|median|inverse`` is computed from the train masks."""
    loss_cfg = OmegaConf.to_container(cfg.loss, resolve=True)
    weights = loss_cfg.get("class_weights")
    if isinstance(weights, str):
        if weights not in ("auto", "median", "inverse"):
            raise ConfigError(
                f"loss.class_weights={weights!r}: expected null, a list of {train_ds.num_classes} "
                "floats, or auto (median frequency) / median / inverse"
            )
        from segkit.data.stats import auto_class_weights

        method = "median" if weights == "auto" else weights
        loss_cfg["class_weights"] = auto_class_weights(train_ds, method)
        log.info(
            "loss.class_weights=%s -> %s", weights, [round(w, 4) for w in loss_cfg["class_weights"]]
        )
    return instantiate(loss_cfg)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over two groups: with and without weight decay (norm, bias)."""
    return instantiate(cfg.optimizer)(params=param_groups(model))


def build_scheduler(cfg: DictConfig, optimizer, loader_len: int):
    """``cfg.scheduler``, stepped per iteration; step counts come from the loader length."""
    per_epoch = min(loader_len, cfg.trainer.limit_train_batches or loader_len)
    total = cfg.trainer.max_epochs * per_epoch
    return instantiate(cfg.scheduler)(optimizer, total_steps=total, steps_per_epoch=per_epoch)


def resume(trainer: Trainer, resume_from: str | None, run_dir: Path, info: dist.DistInfo) -> None:
    """``trainer.resume``: restore the trainer from a checkpoint (see checkpoint.resolve_resume)."""
    path = ckpt_io.resolve_resume(resume_from, run_dir)
    if path is not None:
        ckpt = ckpt_io.load(path, map_location=info.device)
        trainer.load_state(ckpt)
        n, epoch, step = ckpt.get("world_size", 1), ckpt["epoch"], ckpt["step"]
        log.info(
            "resumed from %s at epoch %d, step %d (saved by %d process(es))", path, epoch, step, n
        )


# --------------------------------------------------------------------------- evaluate
def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.ckpt`` on ``cfg.split`` at the original resolution; prints a per-class
    table and writes ``metrics.json`` (and ``predictions/*.png`` with ``save_masks``)."""
    from segkit.data.original import OriginalSizeMasks, collate_original
    from segkit.visualize import PredictionWriter

    check_config(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    device = dist.select_device(cfg.accelerator, 0)
    model, ckpt = ckpt_io.load_model(cfg.ckpt, map_location="cpu")
    ds = dataset_factory(eval_dataset_config(cfg, ckpt["config"]["dataset"]))(
        split=cfg.split, train=False
    )
    loader = DataLoader(
        OriginalSizeMasks(ds),
        batch_size=cfg.loader.batch_size,
        num_workers=cfg.loader.num_workers,
        collate_fn=collate_original,
    )
    writer = PredictionWriter(ds.files, ds.palette, out_dir / "predictions")
    metrics = evaluate_model(
        model.to(device),
        loader,
        ConfusionMatrix(ds.num_classes, ds.ignore_index, device=device),
        device=device,
        amp_dtype=dist.amp_dtype(cfg.precision),
        on_batch=writer if cfg.save_masks else None,
    )
    metrics.pop("confusion")
    metrics.pop("loss")
    report = {"checkpoint": str(cfg.ckpt), "split": cfg.split, "num_images": len(ds)}
    report.update(class_names=list(ds.class_names), **metrics)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    print(format_table(metrics, ds.class_names))
    log.info("metrics written to %s", out_dir / "metrics.json")
    return report


def eval_dataset_config(cfg: DictConfig, stored: dict) -> dict:
    """The dataset to score: ``dataset=NAME`` if given, else the checkpoint's own config;
    ``dataset_root`` replaces its root (same dataset, data somewhere else)."""
    ds = OmegaConf.to_container(cfg.dataset, resolve=True) if cfg.get("dataset") else dict(stored)
    if cfg.dataset_root:
        ds["root"] = cfg.dataset_root
    return ds

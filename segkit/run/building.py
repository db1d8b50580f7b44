"""Builders: config nodes -> datasets, loaders, model, loss, optimizer, schedule (and the
Trainer's loop keyword arguments). Pure construction; the tasks are in ``training`` and
``evaluation``."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segkit import dist, precision
from segkit.config.checks import accepted_kwargs, locate
from segkit.config.keys import DATASET_RUN_KEYS
from segkit.data.doctor import check_for_training
from segkit.data.original_size import OriginalSizeMasks, collate_original
from segkit.data.problems import write_bad_samples
from segkit.data.stats import CLASS_WEIGHT_METHODS, auto_class_weights, is_class_weight_method
from segkit.engine.activation_checkpointing import checkpoint_encoder
from segkit.engine.loader import StopSafeLoader
from segkit.engine.trainer import LoopOptions, Trainer, TrainState
from segkit.errors import CheckpointError, ConfigError
from segkit.evaluation.predictors import make_predictor
from segkit.io import checkpoint as ckpt_io
from segkit.losses.detail import DetailGuided
from segkit.optim import ParamGroups, log_table
from segkit.reporting.experiment_logger import RunContext
from segkit.reporting.run_files import hparams_of, task_overrides
from segkit.reporting.tracker import NullTracker, Tracker
from segkit.run.models import instantiate_model

log = logging.getLogger("segkit")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loop_options(cfg: DictConfig, show_progress: bool) -> LoopOptions:
    """The Trainer's loop keys: ``cfg.trainer`` (the progress bar only where it is shown)."""
    loop = OmegaConf.to_container(cfg.trainer, resolve=True)
    loop["progress_bar"] = bool(loop["progress_bar"]) and show_progress
    return LoopOptions(**loop)


def dataset_factory(node: DictConfig | Mapping) -> Callable[..., Any]:
    """``make(split=..., train=...)`` from a ``dataset`` config node: the ``_partial_``
    constructor without segkit's own keys (``DATASET_RUN_KEYS``); ``train=False`` splits are
    built at ``val_input_shape`` when it is set."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)  # `???` values stay "???"
    missing = sorted(f"dataset.{k}" for k, v in node.items() if v == "???")
    if missing:  # a partial instantiate would silently drop them
        raise ConfigError(
            f"{', '.join(missing)} not set: add {' '.join(f'{k}=...' for k in missing)}"
        )
    kwargs = {k: v for k, v in node.items() if k not in DATASET_RUN_KEYS}
    make = instantiate(kwargs)
    val_shape = node.get("val_input_shape")
    return functools.partial(_make_split, make, list(val_shape)) if val_shape else make


def _make_split(make: Callable[..., Any], val_shape: list[int], *, split: str, train: bool):
    """One split; evaluation splits (``train=False``) at ``val_shape``."""
    if train:
        return make(split=split, train=True)
    return make(split=split, train=False, input_shape=val_shape)


def build_datasets(cfg: DictConfig, *, augment_train: bool = True):
    """``(train dataset, val dataset or None)``; val is None when ``dataset.val_split`` is null."""
    make = dataset_factory(cfg.dataset)
    train_ds = make(split=cfg.dataset.train_split, train=augment_train)
    val_split = cfg.dataset.val_split
    return train_ds, make(split=val_split, train=False) if val_split else None


def check_datasets(cfg: DictConfig, train_ds, val_ds, out_dir: Path | None) -> None:
    """The dataset check before the first step (``dataset.check``); in skip mode the bad
    samples it reports are removed here and listed in ``bad_samples.txt``."""

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
    sampler = dist.ResumableSampler(
        train_ds, info.world_size, info.rank, seed=cfg.seed, drop_last=True
    )
    pin = info.device.type == "cuda"
    common = dict(num_workers=lc.num_workers, pin_memory=pin)
    if lc.num_workers > 0:  # workers live across epochs and validations
        common.update(persistent_workers=True, prefetch_factor=lc.prefetch_factor)
    train_loader = StopSafeLoader(
        train_ds, batch_size=lc.batch_size, sampler=sampler, drop_last=True, **common
    )
    val_sampler = dist.ShardSampler(len(val_ds), info.rank, info.world_size)
    if cfg.dataset.get("val_original_size"):  # masks at each image's own size, as eval.py
        val_ds, common["collate_fn"] = OriginalSizeMasks(val_ds), collate_original
    val_loader = StopSafeLoader(val_ds, batch_size=lc.val_batch_size, sampler=val_sampler, **common)
    return train_loader, val_loader


def build_model(cfg: DictConfig, info: dist.DistInfo) -> nn.Module:
    """``cfg.model`` on this rank's device (SyncBatchNorm under DDP on CUDA with sync_bn;
    activation checkpointing of its encoder with ``trainer.activation_checkpointing``)."""
    model = instantiate_model(cfg.model)
    if cfg.trainer.get("activation_checkpointing"):
        blocks = checkpoint_encoder(model)
        if blocks:
            log.info("trainer.activation_checkpointing: %d encoder blocks", len(blocks))
        else:
            log.warning(
                "trainer.activation_checkpointing: %s has no encoder block to checkpoint "
                "(nothing changes)",
                type(model).__name__,
            )
    if cfg.launch.sync_bn and info.distributed:
        if info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.info("launch.sync_bn: skipped, SyncBatchNorm needs CUDA (device %s)", info.device)
    return model.to(info.device)


def compile_and_wrap(model: nn.Module, cfg: DictConfig, info: dist.DistInfo, unused: bool):
    """``torch.compile`` when ``launch.compile``, then DDP when the job has several ranks.
    ``unused``: some parameters get no gradient (a head the loss ignores, a frozen encoder):
    DDP must not wait for them."""
    if precision.use_channels_last(cfg.trainer.channels_last, info.device):
        model = model.to(memory_format=torch.channels_last)  # before compile and DDP
    if cfg.launch.compile:
        model = torch.compile(model)
    unused = unused or cfg.trainer.freeze_epochs > 0
    return dist.wrap_ddp(model, info, find_unused_parameters=unused)


def unused_heads(model: nn.Module, loss_fn: nn.Module) -> bool:
    """True (with a warning naming the fix) when the model trains a head the loss ignores:
    STDC's detail head without ``loss=ce_detail`` / ``ohem_detail``."""

    if getattr(model, "detail_head", None) is None or isinstance(loss_fn, DetailGuided):
        return False
    log.warning(
        "the model's detail head is not trained by this loss: use loss=ce_detail or ohem_detail"
    )
    return True


def build_loss(cfg: DictConfig, train_ds) -> nn.Module:
    """The loss; ``loss.class_weights=auto|median|sqrt_median|median**P|inverse`` is computed
    from the train masks."""
    loss_cfg = OmegaConf.to_container(cfg.loss, resolve=True)
    weights = loss_cfg.get("class_weights")
    if isinstance(weights, str):
        if not is_class_weight_method(weights):
            raise ConfigError(
                f"loss.class_weights={weights!r}: expected null, a list of {train_ds.num_classes} "
                f"floats, or {' / '.join(CLASS_WEIGHT_METHODS)} (P > 0)"
            )

        method = "median" if weights == "auto" else weights
        loss_cfg["class_weights"] = auto_class_weights(train_ds, method)
        log.info(
            "loss.class_weights=%s -> %s", weights, [round(w, 4) for w in loss_cfg["class_weights"]]
        )
    return instantiate(loss_cfg)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the groups of ``optimizer.param_groups`` (per-module lr and
    weight decay multipliers, no decay on norms and biases); their table goes to the log."""
    node = OmegaConf.to_container(cfg.optimizer, resolve=True)
    rules = node.pop("param_groups", None)
    make = instantiate(node)
    groups = (instantiate(rules) if rules else ParamGroups())(
        model, lr=node["lr"], weight_decay=_default_arg(make, node, "weight_decay", 0.0)
    )
    log.info("optimizer parameter groups:\n%s", log_table(groups))
    return make(params=groups)


def _default_arg(make: functools.partial, node: dict, name: str, fallback: Any) -> Any:
    """``node[name]``, else the default of that argument of the partial's class."""
    if name in node:
        return node[name]
    param = inspect.signature(make.func).parameters.get(name)
    return fallback if param is None or param.default is inspect.Parameter.empty else param.default


def build_scheduler(cfg: DictConfig, optimizer, loader_len: int):
    """``cfg.scheduler``, stepped per optimiser step; step counts come from the loader length
    (one step per ``trainer.accumulate_grad_batches`` batches)."""
    batches = min(loader_len, cfg.trainer.limit_train_batches or loader_len)
    per_epoch = -(-batches // cfg.trainer.accumulate_grad_batches)
    total = cfg.trainer.max_steps or cfg.trainer.max_epochs * per_epoch
    return instantiate(cfg.scheduler)(optimizer, total_steps=total, steps_per_epoch=per_epoch)


def check_resume_fits(stored: dict, cfg: DictConfig, path: Any) -> None:
    """A checkpoint to resume must hold the configured model: same class and classes."""

    old, new = stored.get("model", {}), cfg.model
    n_old, n_new = old.get("num_classes"), new.get("num_classes")
    if old.get("_target_") != new.get("_target_") or n_old != n_new:
        raise CheckpointError(
            f"resume={path}: the checkpoint holds {old.get('_target_')} with {n_old} "
            f"classes, the config {new.get('_target_')} with {n_new}; resuming continues the "
            f"same run: to fine-tune from it instead use model.init_from={path}"
        )


def load_resume(cfg: DictConfig, run_dir: Path, info: dist.DistInfo) -> tuple[Path, dict] | None:
    """``resume`` -> (path, checkpoint) to continue from (see checkpoint.resolve_resume), or
    None for a fresh start; the checkpoint must hold the configured model."""
    path = ckpt_io.resolve_resume(cfg.resume, run_dir)
    if path is None:
        return None
    ckpt = ckpt_io.load(path, map_location=info.device)
    check_resume_fits(ckpt["config"], cfg, path)
    return path, ckpt


def run_finished(ckpt: dict, cfg: DictConfig) -> bool:
    """Whether the run of ``ckpt`` has nothing left to do under this config (``max_steps``
    steps, or its planned epochs under ``trainer.max_time_min``, else ``max_epochs``)."""
    t = cfg.trainer
    state = TrainState.from_checkpoint(ckpt)
    return state.finished(t.max_epochs, t.max_time_min is not None, t.max_steps)


def resume(trainer: Trainer, path: Path, ckpt: dict) -> dict[str, str]:
    """Restore the trainer from ``ckpt`` (read from ``path`` by :func:`load_resume`). Returns
    the checkpoint's tracker run ids (``{logger: run id}``)."""
    trainer.load_state(ckpt)
    n, epoch, step = ckpt.get("world_size", 1), ckpt["epoch"], ckpt["step"]
    log.info("resumed from %s at epoch %d, step %d (saved by %d process(es))", path, epoch, step, n)
    return dict(ckpt.get("tracking") or {})


def val_predictor(cfg: DictConfig) -> Callable[[nn.Module], nn.Module] | None:
    """``dataset.val_window``: validation runs the model in windows of that size, overlapping
    by ``eval.slide.overlap`` (as eval.py's slide mode); None: on the whole picture."""
    window = cfg.dataset.get("val_window")
    if not window:
        return None
    return functools.partial(
        make_predictor,
        mode="slide",
        window=list(window),
        overlap=cfg.eval.slide.overlap,
        batch=cfg.loader.val_batch_size,
    )


# --------------------------------------------------------------------------- loggers
def check_loggers(cfg: DictConfig) -> None:
    """Before any work: each ``logger.<name>`` imports, its package is installed (else the
    install command), and each of its keys is an argument it takes."""
    for key, node in (cfg.get("logger") or {}).items():
        cls = locate(node._target_, f"logger.{key}")
        package, extra = getattr(cls, "requires", (None, None))
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"logger.{key}: the {package} package is not installed; install it with "
                f'`pip install -e ".[{extra}]"` in the segkit folder (or `pip install {package}`), '
                "or choose another logger (logger=tensorboard)"
            )
        known = accepted_kwargs(cls) or set()
        for arg in node:
            if not str(arg).startswith("_") and arg not in known:
                raise ConfigError(
                    f"logger.{key}.{arg}: {cls.__name__} has no argument {arg!r}; its arguments: "
                    f"{sorted(known - {'context'})}"
                )


def sweep_group(run_dir: Path) -> str | None:
    """The sweep folder of a multirun job (its ``.hydra/hydra.yaml`` says MULTIRUN), else
    None: the group its tracker runs share."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return None
    mode = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.mode")
    return str(run_dir.resolve().parent) if str(mode) == "MULTIRUN" else None


def flat_params(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` of a nested plain config; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def build_tracker(
    cfg: DictConfig, trainer: Trainer, out_dir: Path, run_config: dict, run_ids: dict[str, str]
) -> Tracker:
    """Rank 0's tracker with the ``logger`` backends, given the resolved config and the
    overridden keys as params; their run ids go into every checkpoint from now on (a resume
    continues the same runs). ``run_ids``: from the checkpoint resumed, if any."""
    overrides = task_overrides(out_dir)
    base = RunContext(
        out_dir,
        trainer.state.step,
        group=sweep_group(out_dir),
        name=out_dir.name,
        tags={"segkit.overrides": " ".join(overrides)[:5000]},
    )
    loggers = []
    for key, node in (cfg.get("logger") or {}).items():
        make = instantiate(node)
        loggers.append(make(context=dataclasses.replace(base, run_id=run_ids.get(key))))
    figures = trainer.opt.figures
    tracker = Tracker(out_dir, trainer.labels, trainer.state.step, loggers, figures=figures)
    tracker.log_params({**flat_params(run_config), **hparams_of(run_config, overrides)})
    trainer.checkpoints.extra = {"tracking": tracker.run_ids()}
    return tracker


def build_trainer(
    cfg: DictConfig,
    info: dist.DistInfo,
    *,
    out_dir: Path | None = None,
    run_config: dict | None = None,
) -> tuple[Trainer, nn.Module]:
    """data -> model -> loss/optimizer/schedule -> compile/DDP -> Trainer, and the bare model.
    ``out_dir``: rank 0's run directory (checkpoints, bad_samples.txt, progress bar); None on
    the other ranks and for a Trainer that writes nothing (benchmarks, tests)."""
    train_ds, val_ds = build_datasets(cfg)
    check_datasets(cfg, train_ds, val_ds, out_dir)
    train_loader, val_loader = build_loaders(cfg, train_ds, val_ds, info)
    model = build_model(cfg, info)
    optimizer = build_optimizer(cfg, model)
    loss_fn = build_loss(cfg, train_ds).to(info.device)
    trainer = Trainer(
        compile_and_wrap(model, cfg, info, unused_heads(model, loss_fn)),
        loss_fn,
        optimizer,
        build_scheduler(cfg, optimizer, len(train_loader)),
        train_loader,
        val_loader,
        labels=val_ds.labels,
        info=info,
        checkpoints=ckpt_io.NullCheckpointWriter()
        if out_dir is None
        else ckpt_io.CheckpointWriter(out_dir / ckpt_io.CKPT_DIR),
        run_config=run_config or {},
        tracker=NullTracker(),
        options=loop_options(cfg, show_progress=out_dir is not None),
        val_predictor=val_predictor(cfg),
    )
    return trainer, model

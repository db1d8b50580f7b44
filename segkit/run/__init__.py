"""The one place that reads the config: the builders, and the two tasks.

``train(cfg)`` (``train.py``) trains in this process, or starts ``trainer.devices`` worker
processes (``segkit.dist``) that each run :func:`train_rank` on the resolved config and the
one run directory Hydra made. ``evaluate(cfg)`` (``eval.py``) scores a checkpoint at the
images' original resolution. Everything else receives plain values and objects.

- ``building``: config nodes -> datasets, loaders, model, loss, optimizer, schedule;
- ``training``: the train task (spawning, resume, status, result files);
- ``evaluation``: the evaluate task (evaluation modes, metrics files).
"""

from segkit.run.building import (
    CONF_DIR,
    DATASET_RUN_KEYS,
    LAUNCH_KEYS,
    build_datasets,
    build_loaders,
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    build_trainer,
    check_datasets,
    compile_and_wrap,
    compose_model_config,
    dataset_factory,
    instantiate_model,
    loop_options,
    model_config_names,
    resume,
    seed_everything,
    unused_heads,
)
from segkit.run.evaluation import eval_dataset_config, evaluate, score_mode
from segkit.run.training import finish_run, restart_record, train, train_rank

__all__ = [
    "CONF_DIR",
    "DATASET_RUN_KEYS",
    "LAUNCH_KEYS",
    "build_datasets",
    "build_loaders",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "build_trainer",
    "check_datasets",
    "compile_and_wrap",
    "compose_model_config",
    "dataset_factory",
    "eval_dataset_config",
    "evaluate",
    "finish_run",
    "instantiate_model",
    "loop_options",
    "model_config_names",
    "restart_record",
    "resume",
    "score_mode",
    "seed_everything",
    "train",
    "train_rank",
    "unused_heads",
]

"""What a run leaves for people to look at.

- ``tracker``: metrics.csv, the report and the per-validation records, handed to every logger
  (rank 0; a null one elsewhere);
- ``experiment_logger``: the interface every logger backend implements, and its run context;
- ``tensorboard_logger``: TensorBoard events (``logger=tensorboard``, the default);
- ``mlflow_logger``: MLflow runs on a tracking server, and sending what it did not get;
- ``wandb_logger``: Weights & Biases runs, online or offline;
- ``unsent``: what a logger could not send, kept in the run folder for later;
- ``run_files``: config.yaml, metrics.csv, result.json, status.json, overrides, hparams;
- ``run_ownership``: which run owns a run directory: live and earlier runs, overwrite, heartbeat;
- ``figures``: coloured masks, sample grids, confusion matrix, IoU bars, curves, TB layouts;
- ``complexity``: parameter and FLOP counts;
- ``feature_maps``: recording and drawing intermediate feature maps with forward hooks;
- ``sweep_summary``: the Hydra callback that tables every job of a multirun.
"""

"""What a run leaves for people to look at.

- ``tracker``: TensorBoard events and the per-validation pictures (rank 0; a null one elsewhere);
- ``run_files``: config.yaml, metrics.csv, result.json, status.json, overrides, hparams;
- ``run_ownership``: which run owns a run directory: live and earlier runs, overwrite, heartbeat;
- ``figures``: coloured masks, sample grids, confusion matrix, IoU bars, curves, TB layouts;
- ``complexity``: parameter and FLOP counts;
- ``feature_maps``: recording and drawing intermediate feature maps with forward hooks;
- ``sweep_summary``: the Hydra callback that tables every job of a multirun.
"""

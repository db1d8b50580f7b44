"""The training loop and what runs it.

- ``trainer``: the Trainer: fit -> train_one_epoch -> train_step; validate; state;
- ``step_stats``: per-step measurements kept on the device, and the divergence message;
- ``time_budget``: ``trainer.max_time_min``: the epochs that fit, the schedule fitted to them;
- ``ema``: the exponential moving average of the weights;
- ``activation_checkpointing``: recomputing the encoder's blocks in backward instead of storing;
- ``signals``: SIGINT / SIGTERM / submitit's preemption signal -> a clean stop and requeue;
- ``loader``: the DataLoader whose workers survive stop signals;
- ``spawn``: starting the ranks of ``launch.devices=N``, worker logging, the job's run directory;
- ``rank_server``: the first import of the process that forks those ranks (holds stop signals).
"""

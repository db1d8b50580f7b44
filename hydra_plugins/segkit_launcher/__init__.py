"""segkit's sweep launcher (a Hydra plugin: Hydra loads launchers from ``hydra_plugins``)."""

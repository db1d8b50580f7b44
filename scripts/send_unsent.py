"""Send what a run's MLflow logger could not send (its server was down): the records in
``RUN_DIR/unsent/mlflow.jsonl`` go into the run they belong to (a new run when the server was
down from the start). Sending the same file twice does nothing the second time. The run folder
is only read.

  python scripts/send_unsent.py outputs/train/runs/2026-12-07_10-00-00.000000
  python scripts/send_unsent.py RUN_DIR --tracking-uri http://mlflow.example:5000
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segkit.errors import ConfigError, exit_on_error
from segkit.reporting.mlflow_logger import send_unsent
from segkit.reporting.unsent import UNSENT_DIR


def send(run_dir: Path, tracking_uri: str | None) -> str:
    path = run_dir / UNSENT_DIR / "mlflow.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: the run's MLflow logger sent everything")
    try:
        return send_unsent(run_dir, tracking_uri)
    except Exception as e:  # the server is still down, or refuses the records
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"sending {path} failed: {first}; start the server (or pass --tracking-uri) and run "
            "this command again"
        ) from e


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run folder of train.py")
    parser.add_argument("--tracking-uri", help="another server than the run's")
    args = parser.parse_args()
    print(exit_on_error(send, args.run_dir, args.tracking_uri))


if __name__ == "__main__":
    main()

"""Bad input ends with one message and a distinct exit code: every bad value through what
train.py runs, in this process (the command-line check, then the train task under segkit's
error policy). train.py itself, with 1 process and 2: tests/e2e/test_errors.py."""

from __future__ import annotations

import pytest

from segkit.config.checks import check_command_line
from segkit.errors import exit_on_error, run_task
from segkit.run import train
from tests.conftest import TINY, compose_train

CPU = [*TINY, "launch.accelerator=cpu", "dataset.check=off"]

# (override, exit code, the text(s) the one message must hold)
BAD_VALUES = [
    ("optimizer.lr=abc", 2, "optimizer.lr='abc': expected a number > 0"),
    ("loader.batch_size=0", 2, "loader.batch_size=0: expected an integer >= 1"),
    ("loader.batch_size=abc", 2, "loader.batch_size='abc'"),
    ("trainer.max_epochs=-1", 2, "trainer.max_epochs=-1"),
    ("trainer.precision=fp8", 2, "trainer.precision='fp8'"),
    ("loss.class_weights=[1,2]", 2, "loss.class_weights has 2 values but dataset.num_classes=5"),
    ("dataset=voc", 2, "dataset.root not set"),
    ("model._target_=no_such_pkg.Model", 2, "no module named 'no_such_pkg'"),
    ("+ckpt_path=x.pt", 2, "resume=PATH"),
    (
        "trainer.max_epoch=3",
        2,
        ("trainer.max_epoch is not a key", "did you mean trainer.max_epochs?"),
    ),
    ("model=unett", 2, "did you mean unet?"),
    ("+model.base_chanels=8", 2, "did you mean base_channels?"),
    # old key names name their new key
    ("data.batch_size=2", 2, "loader.batch_size"),
    ("+data.num_workers=0", 2, "loader.num_workers"),
    ("data.check=off", 2, "dataset.check"),
    ("trainer.fail_at_step=3", 2, "removed"),
]
# refused by the command-line check, before Hydra makes a run directory: nothing is written
BEFORE_HYDRA = {
    "trainer.max_epoch=3",
    "model=unett",
    "data.batch_size=2",
    "+data.num_workers=0",
    "data.check=off",
    "trainer.fail_at_step=3",
}


def args_for(override: str) -> list[str]:
    return [*(CPU if override != "dataset=voc" else ["launch.accelerator=cpu"]), override]


@pytest.mark.parametrize(("override", "code", "text"), BAD_VALUES)
def test_bad_config_value_is_one_message_with_its_exit_code(
    tmp_path, monkeypatch, capsys, override, code, text
):
    """What ``python train.py ARGS`` runs, minus Hydra's own wrapper (tests/e2e/test_errors.py
    runs train.py itself)."""
    monkeypatch.chdir(tmp_path)
    args = args_for(override)
    stage = "command line"
    with pytest.raises(SystemExit) as exit_info:
        exit_on_error(check_command_line, "train", args)
        stage = "train task"
        run_task(train, compose_train(*args))
    out, err = capsys.readouterr()
    assert exit_info.value.code == code, err[-3000:]
    for fragment in (text,) if isinstance(text, str) else text:
        assert fragment in err, err[-3000:]
    assert "Traceback" not in out + err
    assert err.count("segkit: error:") == 1
    assert stage == ("command line" if override in BEFORE_HYDRA else "train task")
    assert list(tmp_path.iterdir()) == []  # refused before anything was written

"""A training-time budget (``trainer.max_time_min``) that ends the schedule on time.

After every training epoch the run knows what an epoch costs (the mean training epoch so far)
and what a validation costs (the first epoch is always validated, to measure it), and plans how
many epochs fit in what is left with every validation still due reserved, the current epoch's
included; the learning-rate schedule goes on from its current lr to end at that epoch, so the
run finishes annealed instead of being cut off mid-schedule, and the last planned epoch is
validated. When the machine gets slower the plan shrinks (down to stopping after the current
epoch); when it gets faster it grows (never past ``trainer.max_epochs``). The plan and the time
spent are stored in the checkpoint, so a resumed run continues the same budget (and a finished
one is left as it is). The epoch count depends on the measured
speed: to repeat a run bit for bit, train for a fixed ``max_epochs`` instead.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def plan_epochs(
    budget_s: float,
    elapsed_s: float,
    epoch_s: float,
    val_s: float,
    *,
    done: int,
    cap: int,
    val_every: int,
    validated: bool,
) -> int:
    """Total epochs (>= done, <= cap) when ``done`` epochs took ``elapsed_s`` seconds (the
    current one's validation included when ``validated``), a training epoch takes ``epoch_s``
    and a validation ``val_s`` seconds, and the whole run may take ``budget_s``. Every
    validation still to come is reserved: each ``val_every``-th epoch and the last one."""
    left = budget_s - elapsed_s
    for more in range(cap - done, 0, -1):
        if more * epoch_s + val_s * validations_left(done, more, val_every, validated) <= left:
            return done + more
    return done  # stop after this epoch (validated: the last one always is)


def validations_left(done: int, more: int, val_every: int, validated: bool) -> int:
    """Validations still to run when ``done`` epochs are trained and ``more`` (>= 1) follow:
    epochs ``done+1 .. done+more`` that are a multiple of ``val_every`` or the last, and the
    current epoch's own when it is due and not ``validated`` yet."""
    last = done + more
    count = last // val_every - done // val_every + (last % val_every != 0)
    return count + (not validated and done % val_every == 0)


def retarget_schedule(scheduler, total_steps: int) -> str | None:
    """Make a schedule with a ``retarget`` method (segkit's warmup cosine / poly) end at
    ``total_steps``, going on from its current step and lr; returns how, in words, or None
    (unchanged) for other schedulers."""
    if not hasattr(scheduler, "retarget"):
        return None
    return scheduler.retarget(total_steps)

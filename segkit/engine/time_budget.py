"""A training-time budget (``trainer.max_time_min``) that ends the schedule on time.

After every training epoch the run knows what an epoch costs (the mean training epoch so far
plus the last validation's share) and plans how many fit in what is left; the learning-rate
schedule is stretched or shrunk to end at that epoch, so the run finishes annealed instead of
being cut off mid-schedule, and the last planned epoch is validated. When the machine gets
slower the plan shrinks (down to stopping after the current epoch); when it gets faster it
grows (never past ``trainer.max_epochs``). The plan and the time spent are stored in the
checkpoint, so a resumed run continues the same budget. The epoch count depends on the measured
speed: to repeat a run bit for bit, train for a fixed ``max_epochs`` instead.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


def plan_epochs(budget_s: float, elapsed_s: float, epoch_s: float, done: int, cap: int) -> int:
    """Total epochs (>= done, <= cap) when ``done`` epochs took ``elapsed_s`` seconds, each
    further one is expected to take ``epoch_s`` and the whole run may take ``budget_s``."""
    more = math.floor(max(0.0, budget_s - elapsed_s) / max(epoch_s, 1e-9))
    return max(done, min(cap, done + more))


def retarget_schedule(scheduler, total_steps: int) -> str | None:
    """Make a schedule with a ``retarget`` method (segkit's warmup cosine / poly) end at
    ``total_steps``, going on from its current step and lr; returns how, in words, or None
    (unchanged) for other schedulers."""
    if not hasattr(scheduler, "retarget"):
        return None
    return scheduler.retarget(total_steps)

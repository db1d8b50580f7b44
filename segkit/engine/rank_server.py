"""The first import of the rank server of ``launch.devices=N`` (`segkit.engine.spawn`), and of
nothing else: it holds the stop and user signals in the server, so that one sent to the whole
process group (Ctrl-C, ``kill -- -PGID``, ``scancel``) never ends it. The ranks it forks
inherit the hold and release it once their handlers are in place."""

import signal

from segkit.engine.spawn import SERVER_BLOCKED

signal.pthread_sigmask(signal.SIG_BLOCK, SERVER_BLOCKED)

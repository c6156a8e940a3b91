"""Fault injection for the hardening suite (devtools.harden): a worker about to run the artifact named in
``EDGEATTN_FAULT_CRASH`` kills itself with SIGSEGV, as a crashing backend would. Unset: nothing happens."""
from __future__ import annotations

import os
import signal

FAULT_ENV = "EDGEATTN_FAULT_CRASH"


def fault_point(artifact: str | os.PathLike) -> None:
    """Fault injection for the hardening suite (devtools.harden): a worker about to run the artifact named in
    ``EDGEATTN_FAULT_CRASH`` kills itself with SIGSEGV, as a crashing backend would. Unset: nothing happens."""
    name = os.environ.get(FAULT_ENV)
    if name and os.path.basename(str(artifact)) == name:
        os.kill(os.getpid(), signal.SIGSEGV)


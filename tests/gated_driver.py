"""``python tests/gated_driver.py GATE hybrid-hpo-args...``: the hybrid-hpo CLI whose trials wait at
the start of each epoch until the file GATE exists (at most GATE_LIMIT_S, then the trial errors).

A test holds a real driver process with a RUNNING trial for as long as it needs, independent of
the machine's speed. The trainable class lives in ``__main__``, so Ray ships it by value."""
from __future__ import annotations

import os
import sys
import time

from hybrid_hpo import cli
from hybrid_hpo.tune import trainable as trainable_module

GATE_LIMIT_S = 600.0


class IFTTrainable(trainable_module.IFTTrainable):  # Ray's name for the trainable: resumable ungated
    """IFTTrainable whose epochs wait for the file GATE."""

    GATE = ""

    def step(self):
        deadline = time.monotonic() + GATE_LIMIT_S
        while not os.path.exists(self.GATE):
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {self.GATE} not opened within {GATE_LIMIT_S} s")
            time.sleep(0.1)
        return super().step()


if __name__ == "__main__":
    IFTTrainable.GATE = sys.argv[1]
    trainable_module.IFTTrainable = IFTTrainable
    sys.exit(cli.main(sys.argv[2:]))

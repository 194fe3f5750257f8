"""Test helper: run an entry point and stop it abruptly after a step, as a killed process stops (no export, no
final evaluation, nothing flushed): `python tests/killed_run.py STEP pretrain|finetune ARGS...`, also under
`accelerate launch` (every rank stops after the same step). The product's CLI has no such option.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    stop_after, entry, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]

    def kill(state) -> None:
        if state.step >= stop_after:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # no cleanup, no export: what a kill leaves behind

    if entry == "pretrain":
        from pretrain.__main__ import main as run
    elif entry == "finetune":
        from finetune.__main__ import main as run
    else:
        raise SystemExit(f"unknown entry point {entry!r}")
    return run(argv, callbacks=[kill])


if __name__ == "__main__":
    raise SystemExit(main())

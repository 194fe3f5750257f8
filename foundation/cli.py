"""What every entry point does with bad input: one line on stderr naming the culprit, exit 2, no traceback.

`python -m pretrain`, `python -m finetune`, `python -m finetune.evaluate|study|benchmark`, `python -m model_cards`,
`python -m foundation.data` and `python -m foundation.pdes` all run their body through `guarded`, so a typo in a
path, a corrupt file or an impossible option ends the same way everywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

# The project's own bad-input errors are ValueErrors (foundation.data.DataError, pretrain.config.OptionError,
# foundation.pdes.UnstableSettings); missing, unreadable or existing-but-protected files are OSErrors
# (FileNotFoundError, FileExistsError, PermissionError). Anything else is a bug and keeps its traceback.
BAD_INPUT: tuple[type[Exception], ...] = (ValueError, OSError)


def fail(message: object, code: int = 2) -> int:
    """Print `error: message` on stderr and return `code` (for checks an entry point makes itself)."""
    print(f"error: {message}", file=sys.stderr)
    return code


def guarded(body: Callable[[], int | None], exits: Mapping[type[BaseException], int] | None = None) -> int:
    """Run an entry point's body: its return code (None is 0); bad input -> one line and exit 2.

    Args:
        body: The work, after argument parsing.
        exits: Further exceptions with their exit codes, checked first (training: a non-finite loss exits 3).
    """
    try:
        return body() or 0
    except BaseException as error:
        for kind, code in (exits or {}).items():
            if isinstance(error, kind):
                return fail(error, code)
        if isinstance(error, BAD_INPUT):
            return fail(error)
        raise

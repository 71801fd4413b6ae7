"""Shared top-of-script behaviour for the entry points."""
import sys
from typing import Callable, Optional, Sequence

from utils.errors import GlassError

TRAINED_WEIGHTS_HELP = ("read the weights training left, not their moving average (a run trained with "
                        "training.weight_average_decay saves both; the average is read by default)")


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> None:
    """Run `main(argv)`; a `GlassError` becomes a one-line message and exit status 2.

    Ctrl-C exits with status 130 and a short message rather than a traceback; the
    functions called by `main` are responsible for leaving no half-written output.
    """
    try:
        status = main(argv)
    except GlassError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)

"""Bounded, jittered backoff for commits that lose a race to another writer."""

from __future__ import annotations

import random
import time

from lake._errors import CatalogError

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with full jitter, bounded in attempts.

    Writers that collide back off for a random time up to ``base * 2**attempt`` seconds
    (capped at ``cap``), so they spread out instead of colliding again in lock step.

    Parameters
    ----------
    what : str
        What is being retried, for the error message (``"commit to 'instances'"``).
    attempts : int
        How many failures are tolerated before :meth:`failed` raises.
    base, cap : float
        First and largest backoff window in seconds.
    """

    def __init__(
        self, what: str, *, attempts: int = 60, base: float = 0.01, cap: float = 1.0
    ) -> None:
        self.what = what
        self.attempts = attempts
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = random.Random()

    def failed(self, cause: Exception) -> None:
        """Record one lost race and sleep before the next attempt.

        Raises
        ------
        CatalogError
            When ``attempts`` races were lost in a row.
        """
        self.failures += 1
        if self.failures >= self.attempts:
            raise CatalogError(
                f"the {self.what} lost {self.failures} races with other writers in a row "
                f"({type(cause).__name__}); nothing was committed by this attempt, so retry "
                "when the lake is less busy"
            ) from None
        window = min(self.cap, self.base * 2 ** min(self.failures, 20))
        time.sleep(self._rng.uniform(0, window))

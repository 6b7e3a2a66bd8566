"""How the saga's steps report a business failure to Temporal."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from domain.errors import DomainError


def business_failure(error: DomainError) -> ApplicationError:
    """A business failure as Temporal sees it: typed by its code and never retried. Benign: an expected
    outcome (a declined card) is logged at DEBUG, not as a worker error with a traceback."""
    return ApplicationError(
        str(error), type=error.code, non_retryable=True, category=ApplicationErrorCategory.BENIGN
    )

"""The notification reactor's SMTP rules without a server: which address is mailed, which failure is final."""

from __future__ import annotations

import aiosmtplib
import pytest

from reactors.base import PermanentError, TransientError
from reactors.notification.smtp import ConnectFailed, classify, mailable_address, needs_smtputf8

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("stored", "mailed", "smtputf8"),
    [
        ("ada@xn--bcher-kva.example", "ada@xn--bcher-kva.example", False),
        ("ada@bücher.example", "ada@xn--bcher-kva.example", False),  # stored before the API kept ASCII
        ("ada@example.com", "ada@example.com", False),
        ("jürgen@example.com", "jürgen@example.com", True),
        ("jürgen@bücher.example", "jürgen@bücher.example", True),
    ],
)
def test_the_address_mailed_is_ascii_unless_the_local_part_is_not(
    stored: str, mailed: str, smtputf8: bool
) -> None:
    assert mailable_address(stored) == mailed
    assert needs_smtputf8(mailed) is smtputf8


@pytest.mark.parametrize("stored", ["not-an-address", "a b@example.com", "ada@"])
def test_an_address_that_cannot_be_mailed_is_permanent(stored: str) -> None:
    with pytest.raises(PermanentError, match="cannot be mailed"):
        mailable_address(stored)


ASCII, UTF8 = "ada@example.com", "jürgen@example.com"


@pytest.mark.parametrize(
    ("error", "recipient", "verdict", "says"),
    [
        (
            aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no such user", ASCII)]),
            ASCII,
            PermanentError,
            "550 no such user",
        ),
        (
            aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(451, "try later", ASCII)]),
            ASCII,
            TransientError,
            "451 try later",
        ),
        (
            aiosmtplib.SMTPSenderRefused(553, "sender not allowed", "orders@example.com"),
            ASCII,
            PermanentError,
            "553",
        ),
        (aiosmtplib.SMTPDataError(554, "message refused"), ASCII, PermanentError, "554 message refused"),
        (aiosmtplib.SMTPDataError(452, "insufficient storage"), ASCII, TransientError, "452"),
        (aiosmtplib.SMTPResponseException(421, "closing"), ASCII, TransientError, "421"),
        (aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported"), UTF8, PermanentError, "needs SMTPUTF8"),
        # Not about SMTPUTF8 for an ASCII address: some other extension, a server to fix, not a mail to drop.
        (aiosmtplib.SMTPNotSupported("something else"), ASCII, TransientError, "something else"),
        (aiosmtplib.SMTPServerDisconnected("gone"), ASCII, TransientError, "gone"),
        (aiosmtplib.SMTPReadTimeoutError("slow"), ASCII, TransientError, "slow"),
        (ConnectionRefusedError(111, "refused"), ASCII, TransientError, "refused"),
        (TimeoutError(), ASCII, TransientError, "TimeoutError"),
        (
            ConnectFailed("SMTPAuthenticationError: 535 bad credentials"),
            ASCII,
            TransientError,
            "cannot connect",
        ),
        (ValueError("Address contains characters not permitted"), ASCII, PermanentError, "not permitted"),
    ],
)
def test_failures_are_classified_with_their_reason(
    error: BaseException, recipient: str, verdict: type[Exception], says: str
) -> None:
    classified = classify(error, recipient)
    assert type(classified) is verdict
    assert says in str(classified) and recipient in str(classified)

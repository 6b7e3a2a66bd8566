"""The notification's mail template against the email package: the same bytes where the template writes
them, the email package's own output where it does not, and no header injection either way.

The reference is what the reactor sent before the template: an `EmailMessage` flattened the way
`aiosmtplib.SMTP.send_message` flattens it (SMTPUTF8 policy for a non-ASCII recipient; 8bit or 7bit as the
server offers 8BITMIME)."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

import aiosmtplib
import pytest
from aiosmtplib.email import flatten_message
from hypothesis import given, settings
from hypothesis import strategies as st

from reactors.base import PermanentError
from reactors.notification.smtp import classify, mailable_address
from reactors.notification.template import MailTemplate, compose

pytestmark = pytest.mark.unit

SENDER = "Order Saga <orders@example.com>"
MESSAGE_ID = "<0b6f3c1e-5d0a-5e0b-9c53-3a1f0f1b2c3d@order-saga>"
BODY = "Good news: your order o-1 is on its way.\n\n  2 x SKU-A\n\nTotal: 20.00 EUR\n"


def reference(
    recipient: str,
    subject: str,
    body: str,
    message_id: str = MESSAGE_ID,
    sender: str = SENDER,
    eight_bit: bool = True,
) -> bytes:
    return flatten_message(
        compose(sender, recipient, subject, body, message_id),
        utf8=not recipient.isascii(),
        cte_type="8bit" if eight_bit else "7bit",
    )


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_a_plain_mail_is_byte_for_byte_what_the_email_package_sends() -> None:
    envelope = MailTemplate(SENDER).render("ada@example.com", "Your order o-1 has shipped", BODY, MESSAGE_ID)
    assert envelope.data == reference("ada@example.com", "Your order o-1 has shipped", BODY)
    assert (envelope.sender, envelope.recipient, envelope.smtputf8) == (
        "orders@example.com",
        "ada@example.com",
        False,
    )


printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@settings(max_examples=400, deadline=None)
@given(
    subject=st.text(
        st.one_of(printable, st.characters(min_codepoint=0x80, max_codepoint=0x2FFF)), max_size=120
    ),
    body=st.text(st.characters(min_codepoint=1, exclude_categories=["Cs"]), max_size=400),
    eight_bit=st.booleans(),
)
def test_any_subject_and_body_give_the_email_package_s_bytes(
    subject: str, body: str, eight_bit: bool
) -> None:
    """Plain ASCII, non-ASCII (RFC 2047 encoded words), long (folded), empty, `=?` lookalikes, 8bit or base64
    bodies: whichever path writes it, the bytes are those the email package writes."""
    template = MailTemplate(SENDER)
    if len(f"{subject}.".splitlines()) > 1:  # a line break: the template refuses it
        with pytest.raises(ValueError):
            template.render("ada@example.com", subject, body, MESSAGE_ID)
        if len(subject.splitlines()) > 1:  # and so does the email package, unless it is the last character
            with pytest.raises(ValueError):
                reference("ada@example.com", subject, body)
        return
    envelope = template.render("ada@example.com", subject, body, MESSAGE_ID, eight_bit=eight_bit)
    assert envelope.data == reference("ada@example.com", subject, body, eight_bit=eight_bit)


def test_a_subject_that_looks_encoded_is_left_to_the_email_package() -> None:
    """`=?...?=` in a plain subject would be decoded by readers: the template does not write it itself."""
    subject = "Your order =?utf-8?q?o-1?= has shipped"
    envelope = MailTemplate(SENDER).render("ada@example.com", subject, BODY, MESSAGE_ID)
    assert envelope.data == reference("ada@example.com", subject, BODY)


@pytest.mark.parametrize(
    ("recipient", "subject", "sender"),
    [
        ("ada@xn--bcher-kva.example", "Your order o-1 has shipped", SENDER),  # IDNA domain: ASCII
        ("jürgen@example.com", "Your order o-1 has shipped", SENDER),  # SMTPUTF8: the UTF-8 policy
        ("ada@example.com", "Votre commande « o-1 » est expédiée", SENDER),  # RFC 2047
        ("ada@example.com", "Your order o-1 has shipped", "Bestellservice Müller <orders@example.com>"),
        ("ada@example.com", "Your order " + "x" * 90 + " has shipped", SENDER),  # folded
    ],
)
def test_non_ascii_names_and_addresses_read_back_as_they_were_written(
    recipient: str, subject: str, sender: str
) -> None:
    envelope = MailTemplate(sender).render(recipient, subject, BODY, MESSAGE_ID)
    assert envelope.data == reference(recipient, subject, BODY, sender=sender)
    assert envelope.smtputf8 is (not recipient.isascii())
    mail = parsed(envelope.data)
    assert (mail["From"], mail["To"], mail["Subject"], mail["Message-ID"]) == (
        sender,
        recipient,
        subject,
        MESSAGE_ID,
    )
    assert mail.get_content().replace("\r\n", "\n") == BODY


@pytest.mark.parametrize(
    ("recipient", "subject", "message_id"),
    [
        ("ada@example.com", "Your order o-1\r\nBcc: victim@example.com", MESSAGE_ID),
        ("ada@example.com", "Your order o-1\nBcc: victim@example.com", MESSAGE_ID),
        ("ada@example.com", "Your order o-1\r\n\r\nforged body", MESSAGE_ID),
        ("ada@example.com", "Your order o-1\u2028Bcc: victim@example.com", MESSAGE_ID),
        ("ada@example.com\r\nBcc: victim@example.com", "Your order o-1", MESSAGE_ID),
        ("ada@example.com", "Your order o-1", "<e-1@order-saga>\r\nBcc: victim@example.com"),
    ],
)
def test_a_line_break_in_a_header_is_refused_like_the_email_package_does(
    recipient: str, subject: str, message_id: str
) -> None:
    with pytest.raises(ValueError, match="line break"):
        MailTemplate(SENDER).render(recipient, subject, BODY, message_id)
    with pytest.raises(ValueError):
        compose(SENDER, recipient, subject, BODY, message_id)  # the reference refuses them too
    # The reactor's verdict on it: permanent (no retry can fix the event), the row `failed`, the DLQ.
    assert isinstance(classify(ValueError("line break"), recipient), PermanentError)


def test_a_trailing_line_break_the_email_package_lets_through_is_refused() -> None:
    """Where the template is stricter than its reference: the email package accepts a header value that
    ends with a line break and writes it, which ends the header block early (the headers after it become
    the body). The template refuses it like any other line break."""
    subject = "Your order o-1 has shipped\r\n"
    written = reference("ada@example.com", subject, BODY)
    assert b"has shipped\r\n\r\nMessage-ID:" in written  # an empty line inside the headers
    assert parsed(written)["Message-ID"] is None  # a reader sees no Message-ID: it went to the body
    with pytest.raises(ValueError, match="line break"):
        MailTemplate(SENDER).render("ada@example.com", subject, BODY, MESSAGE_ID)


def test_an_injected_header_never_reaches_the_wire_through_the_address_either() -> None:
    """The recipient comes from email-validator, which refuses what could break a header line."""
    with pytest.raises(PermanentError):
        mailable_address("ada@example.com\r\nBcc: victim@example.com")


def test_a_sender_without_an_address_is_refused_when_the_template_is_compiled() -> None:
    with pytest.raises(ValueError, match="no address"):
        MailTemplate("Order Saga")


def test_the_envelope_asks_for_smtputf8_only_for_a_non_ascii_local_part() -> None:
    template = MailTemplate(SENDER)
    assert not template.render("ada@xn--bcher-kva.example", "s", BODY, MESSAGE_ID).smtputf8
    assert template.render("jürgen@example.com", "s", BODY, MESSAGE_ID).smtputf8
    # aiosmtplib refuses SMTPUTF8 where the server lacks it; the reactor takes that as permanent.
    refused = classify(aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported"), "jürgen@example.com")
    assert isinstance(refused, PermanentError) and "SMTPUTF8" in str(refused)

"""The SMTP transport over STARTTLS (with login) and implicit TLS, against aiosmtpd with a throwaway CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from nurture.mail.factory import transport_from_url
from nurture.mail.transports import SmtpTransport, TemporaryFailure
from tests.support.processes import RecordingHandler, SmtpScript, free_port

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: tls\r\n\r\nhello\r\n.leading dot\r\n"


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[1]), str(certificate[0]))
    return context


def _authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:  # type: ignore[no-untyped-def]
    return AuthResult(success=auth_data.login == b"mailer" and auth_data.password == b"s3cret")


def test_starttls_with_login_delivers_and_reuses_the_connection(certificate) -> None:  # type: ignore[no-untyped-def]
    handler = RecordingHandler(SmtpScript())
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, tls_context=_server_context(certificate),
        require_starttls=True, authenticator=_authenticate, auth_require_tls=True,
    )  # fmt: skip
    controller.start()
    try:
        transport = transport_from_url(
            f"smtp://mailer:s3cret@127.0.0.1:{port}?starttls=1&cafile={certificate[1]}", timeout=5
        )
        assert isinstance(transport, SmtpTransport)
        transport.send("a@example.com", "b@example.com", MESSAGE)
        connection = transport._conn
        transport.send("a@example.com", "c@example.com", MESSAGE)
        assert transport._conn is connection  # one connection for both messages
        transport.close()
    finally:
        controller.stop()
    assert [r.rcpt_tos for r in handler.received] == [["b@example.com"], ["c@example.com"]]
    assert b"\r\n.leading dot\r\n" in handler.received[0].data  # dot-stuffing undone by the server


def test_implicit_tls_smtps_delivers(certificate) -> None:  # type: ignore[no-untyped-def]
    handler = RecordingHandler(SmtpScript())
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, ssl_context=_server_context(certificate)
    )
    controller.start()
    try:
        transport = transport_from_url(f"smtps://127.0.0.1:{port}?cafile={certificate[1]}", timeout=5)
        transport.send("a@example.com", "b@example.com", MESSAGE)
        transport.close()
    finally:
        controller.stop()
    assert len(handler.received) == 1


def test_an_untrusted_certificate_is_refused(certificate) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    controller = Controller(
        RecordingHandler(SmtpScript()),
        hostname="127.0.0.1",
        port=port,
        ssl_context=_server_context(certificate),
    )
    controller.start()
    try:
        transport = transport_from_url(f"smtps://127.0.0.1:{port}", timeout=5)  # system CAs only
        with pytest.raises(TemporaryFailure, match="connect"):
            transport.send("a@example.com", "b@example.com", MESSAGE)
    finally:
        controller.stop()


def test_a_server_that_closed_an_idle_connection_is_reconnected_once() -> None:
    handler = RecordingHandler(SmtpScript())
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        transport = transport_from_url(f"smtp://127.0.0.1:{port}", timeout=5)
        transport.send("a@example.com", "b@example.com", MESSAGE)
        assert isinstance(transport, SmtpTransport) and transport._conn is not None
        transport._conn.sock.close()  # as if the server had timed the idle connection out
        transport.send("a@example.com", "c@example.com", MESSAGE)
    finally:
        controller.stop()
    assert len(handler.received) == 2

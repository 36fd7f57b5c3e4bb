"""`nurture doctor`: one line per check against real services, and a non-zero exit naming what is wrong."""

from __future__ import annotations

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from click.testing import CliRunner

from nurture.cli import main
from tests.support.processes import RecordingHandler, SmtpScript, free_port

CHECKS = ["settings", "database", "migrations", "broker", "smtp", "dkim"]


def _lines(output: str) -> dict[str, tuple[str, str]]:
    """check name -> (status, detail)"""
    parsed = {}
    for line in output.splitlines():
        status, name, detail = line.split(None, 2)
        parsed[name] = (status, detail)
    return parsed


def _doctor() -> tuple[int, dict[str, tuple[str, str]], str]:
    result = CliRunner().invoke(main, ["doctor"])
    return result.exit_code, _lines(result.output), result.output


def test_everything_ok_on_postgresql_redis_starttls_with_login_and_dkim(
    pg_factory, redis_url, set_env, dkim_pem, certificate, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[1]), str(certificate[0]))

    def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:  # type: ignore[no-untyped-def]
        return AuthResult(success=auth_data.login == b"mailer" and auth_data.password == b"s3cret")

    port = free_port()
    controller = Controller(
        RecordingHandler(SmtpScript()), hostname="127.0.0.1", port=port, tls_context=context,
        require_starttls=True, authenticator=authenticate, auth_require_tls=True,
    )  # fmt: skip
    controller.start()
    try:
        monkeypatch.setenv(
            "SSL_CERT_FILE", str(certificate[1])
        )  # trust the test CA, as a relay's CA would be
        set_env(
            broker_url=redis_url,
            smtp_url=f"smtp://mailer:s3cret@127.0.0.1:{port}?starttls=1",
            dkim_key=str(dkim_pem),
        )
        code, lines, output = _doctor()
    finally:
        controller.stop()
    assert code == 0, output
    assert list(lines) == CHECKS
    assert all(status == "ok" for status, _ in lines.values()), output
    assert "postgresql+psycopg://postgres@127.0.0.1:5432/" in lines["database"][1]
    assert "redis://127.0.0.1:6379/" in lines["broker"][1]
    smtp = lines["smtp"][1]
    assert "EHLO ok" in smtp and "STARTTLS TLSv1." in smtp and "login as mailer ok" in smtp
    assert "s3cret" not in output
    assert "2048-bit RSA key signs and verifies" in lines["dkim"][1]
    assert "nurture._domainkey.example.com" in lines["dkim"][1]


def test_failures_are_named_one_per_line_and_exit_non_zero(tmp_path, set_env, dkim_pem) -> None:  # type: ignore[no-untyped-def]
    controller = Controller(RecordingHandler(SmtpScript()), hostname="127.0.0.1", port=free_port())
    controller.start()  # plain SMTP, no STARTTLS on offer
    try:
        set_env(
            database_url=f"sqlite:///{tmp_path / 'never-migrated.db'}",
            smtp_url=f"smtp://127.0.0.1:{controller.port}?starttls=1",
            dkim_key=str(dkim_pem),
            dkim_domain="someone-else.example",
        )
        code, lines, _output = _doctor()
    finally:
        controller.stop()
    assert code == 1
    assert list(lines) == CHECKS
    assert lines["database"][0] == "ok" and lines["broker"][0] == "ok"
    assert lines["migrations"][0] == "FAIL" and "nurture db upgrade" in lines["migrations"][1]
    assert lines["smtp"][0] == "FAIL" and "does not offer" in lines["smtp"][1]
    assert lines["dkim"][0] == "FAIL" and "does not align" in lines["dkim"][1]


def test_unreachable_services_fail(set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(
        database_url=f"postgresql://nurture@127.0.0.1:{free_port()}/nurture",
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        smtp_url=f"smtp://127.0.0.1:{free_port()}",
    )
    code, lines, _output = _doctor()
    assert code == 1
    assert [name for name, (status, _) in lines.items() if status == "FAIL"] == [
        "database", "migrations", "broker", "smtp",
    ]  # fmt: skip
    assert "cannot connect" in lines["smtp"][1]


def test_unusable_settings_are_one_failing_line(tmp_path, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(dkim_key=str(tmp_path / "missing.pem"))
    code, lines, _output = _doctor()
    assert code == 1 and list(lines) == ["settings"]
    assert lines["settings"][0] == "FAIL" and "NURTURE_DKIM_KEY" in lines["settings"][1]

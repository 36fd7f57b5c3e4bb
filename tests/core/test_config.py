"""Settings: development defaults work; unsafe defaults are refused elsewhere with a clear message."""

from __future__ import annotations

import pytest

from nurture.core.config import DEV_SECRET_KEY, ConfigError, get_settings


def test_development_defaults_need_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing but the choice of development itself (make run makes it; unset is production).
    for key in ("NURTURE_SECRET_KEY", "NURTURE_SMTP_URL", "NURTURE_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NURTURE_ENV", "development")
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.resolved_database_url.startswith("sqlite:///") and settings.embedded_broker
    assert settings.resolved_smtp_url.startswith("maildir://") and settings.resolved_smtp_url.endswith(
        "/mail"
    )
    assert settings.mail.from_domain == "example.com"


@pytest.mark.parametrize("secret", ["", "changeme", DEV_SECRET_KEY, "short-but-not-placeholder"])
def test_placeholder_or_short_secret_is_refused_outside_development(monkeypatch, secret) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NURTURE_ENV", "test")
    monkeypatch.setenv("NURTURE_SECRET_KEY", secret)
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="NURTURE_SECRET_KEY"):
        get_settings()


def test_production_wants_a_real_address_and_https(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NURTURE_ENV", "production")
    monkeypatch.setenv("NURTURE_BASE_URL", "http://nurture.example.org")
    get_settings.cache_clear()
    with pytest.raises(ConfigError) as error:
        get_settings()
    assert "NURTURE_POSTAL_ADDRESS" in str(error.value) and "https" in str(error.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("NURTURE_DISPATCH_INTERVAL", "-1", "dispatch_interval"),
        ("NURTURE_BASE_URL", "not a url", "base_url"),
        ("NURTURE_FROM", "no address here", "NURTURE_FROM"),
        ("NURTURE_AMBIGUOUS_POLICY", "maybe", "ambiguous_policy"),
    ],
)
def test_bad_values_name_the_setting(monkeypatch, key, value, message) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match=message):
        get_settings()


def test_the_cli_reports_bad_settings_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from nurture.cli import main

    monkeypatch.setenv("NURTURE_SECRET_KEY", "changeme")
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 1
    assert "NURTURE_SECRET_KEY" in result.output and "Traceback" not in result.output


def test_a_variable_named_like_a_section_is_no_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sections are read from their own variables; NURTURE_MAIL or NURTURE_WEB set by accident change nothing.
    monkeypatch.setenv("NURTURE_ENV", "development")
    monkeypatch.setenv("NURTURE_MAIL", "not json")
    monkeypatch.setenv("NURTURE_WEB", '{"base_url": "https://elsewhere.example"}')
    monkeypatch.setenv("NURTURE_BASE_URL", "https://clinic.example")
    get_settings.cache_clear()
    assert get_settings().web.base_url == "https://clinic.example"


def test_every_bad_variable_is_named_at_once_whichever_section_it_is_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NURTURE_ENV", "production")
    monkeypatch.setenv("NURTURE_SMTP_RATE", "fast")  # mail
    monkeypatch.setenv("NURTURE_DISPATCH_INTERVAL", "-1")  # broker
    monkeypatch.setenv("NURTURE_SECRET_KEY", "changeme")  # general
    get_settings.cache_clear()
    with pytest.raises(ConfigError) as error:
        get_settings()
    assert all(name in str(error.value) for name in ("smtp_rate", "dispatch_interval", "NURTURE_SECRET_KEY"))

"""Configuration sources: list settings from the environment."""

from __future__ import annotations

import pytest

from server.config import ConfigError, load_settings


def test_list_settings_are_comma_separated_in_the_environment() -> None:
    settings = load_settings(
        environ={
            "GEARHALL_ALLOWED_ORIGINS": "https://play.example, https://beta.example,",
            "GEARHALL_TRUSTED_PROXIES": "",
        }
    )
    assert settings.allowed_origins == ["https://play.example", "https://beta.example"]
    assert settings.trusted_proxies == []


def test_flags_and_files_give_lists_as_lists() -> None:
    settings = load_settings({"trusted_proxies": ["10.0.0.1"]}, environ={})
    assert settings.trusted_proxies == ["10.0.0.1"]
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_settings({"trusted_proxies": "10.0.0.1"}, environ={})


def test_secrets_are_masked_and_oidc_needs_a_client_id() -> None:
    from server.config import render

    settings = load_settings(
        {"oidc_issuer": "https://issuer.example", "oidc_client_id": "game"},
        environ={"GEARHALL_OIDC_CLIENT_SECRET": "s3cret-value"},
    )
    shown = render(settings)
    assert "s3cret-value" not in shown and 'oidc_client_secret = "***"' in shown
    with pytest.raises(ConfigError, match="oidc_client_id"):
        load_settings({"oidc_issuer": "https://issuer.example"}, environ={})


def test_trusted_proxies_must_be_addresses() -> None:
    with pytest.raises(ConfigError, match="not an IP address"):
        load_settings(environ={"GEARHALL_TRUSTED_PROXIES": "10.0.0.1,lb.internal"})

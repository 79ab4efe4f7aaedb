"""The one redaction helper: credentials in URLs, headers and keys never reach a message."""

from __future__ import annotations

import pytest

from arena_dagster.backends.base import ModelSpec
from arena_dagster.backends.redact import redact, redact_config, redact_url


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("http://user:secret@host:8000/v1", "secret", "http://***@host:8000/v1"),
        ("https://tok3n@api.example.com/v1/chat", "tok3n", "https://***@api.example.com/v1/chat"),
        ("failed: POST http://a:b-pass@10.0.0.1/v1/chat/completions (refused)", "b-pass", "http://***@10.0.0.1/v1"),
        ("Authorization: Bearer abcdef123456", "abcdef123456", "Authorization: Bearer ***"),
        ("{'authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz", "'authorization': 'Basic ***'"),
        ("headers={'api-key': 'azure-key-123'}", "azure-key-123", "'api-key': '***'"),
        ("x-api-key=anthropic-key-99", "anthropic-key-99", "x-api-key=***"),
        ("GET http://h/v1/models?api_key=qwerty&x=1", "qwerty", "?api_key=***&x=1"),
        ("Incorrect API key provided: sk-proj-AbC123xyz789", "sk-proj-AbC123xyz789", "provided: ***"),
        ("OPENAI_API_KEY=sk-abcdefghijk", "sk-abcdefghijk", "OPENAI_API_KEY=***"),
    ],
)
def test_credentials_are_masked_and_the_rest_kept(text: str, secret: str, kept: str) -> None:
    out = redact(text)
    assert secret not in out and kept in out


def test_named_secrets_are_masked_wherever_they_appear() -> None:
    assert redact("the server echoed my-key-4242 back", secrets=["my-key-4242"]) == "the server echoed *** back"
    assert redact("short ab stays", secrets=["ab", ""]) == "short ab stays"  # too short to be a key


def test_plain_text_and_urls_without_credentials_are_unchanged() -> None:
    for text in ("http://127.0.0.1:8000/v1", "model 'Qwen/Qwen2.5-7B' at https://api.example.com/v1 (HTTP 500)",
                 "user@example.com wrote", "ratio 3:1 @ noon"):
        assert redact(text) == text
    assert redact_url("http://u:p@h/v1") == "http://***@h/v1"


def test_config_values_are_redacted_but_names_kept() -> None:
    config = {"backend": "openai", "base_url": "http://u:pw1@h/v1", "api_key_env": "MY_KEY", "api_key": "sk-zzzzzzzzzz",
              "options": {"extra_headers": {"Authorization": "Bearer tokentoken"}}, "concurrency": 4}
    out = redact_config(config)
    assert out["base_url"] == "http://***@h/v1" and out["api_key_env"] == "MY_KEY" and out["api_key"] == "***"
    assert out["options"]["extra_headers"]["Authorization"] == "***" and out["concurrency"] == 4
    assert config["base_url"] == "http://u:pw1@h/v1"  # a copy


def test_model_spec_repr_hides_url_credentials() -> None:
    spec = ModelSpec(name="m", backend="openai", path="x", base_url="http://bob:pw-secret@h:1/v1")
    assert "pw-secret" not in repr(spec) and "bob" not in repr(spec) and "http://***@h:1/v1" in repr(spec)
    assert spec.base_url == "http://bob:pw-secret@h:1/v1"  # the value itself is untouched

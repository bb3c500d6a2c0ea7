"""Production settings: SECRET_KEY required, *_FILE secrets, and `check --deploy` clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from glucoscope.env import ImproperlyConfiguredValue, env_bool, env_str

REPO_ROOT = Path(__file__).resolve().parents[1]


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "SECURE_SSL_REDIRECT"}}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO_ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_production_mode_refuses_to_start_without_a_secret_key() -> None:
    result = manage("check")
    assert result.returncode != 0
    assert "SECRET_KEY is required when DEBUG is false" in result.stderr


def test_check_deploy_passes_in_production_mode(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-long-random-production-secret-key-" + "x" * 40)
    result = manage("check", "--deploy", "--fail-level", "WARNING", SECRET_KEY_FILE=str(secret_file),
                    ALLOWED_HOSTS="glucoscope.example.org")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_env_helpers_fail_loudly_on_bad_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(ImproperlyConfiguredValue, match="SOME_FLAG"):
        env_bool("SOME_FLAG", False)
    monkeypatch.setenv("SOME_SECRET_FILE", str(tmp_path / "absent"))
    with pytest.raises(ImproperlyConfiguredValue, match="SOME_SECRET_FILE"):
        env_str("SOME_SECRET")

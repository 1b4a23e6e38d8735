"""docker-compose.yml and the Dockerfile cannot be run here (no Docker engine), so
check what can go wrong without one: the YAML parses, services wire to commands the
CLI really has, and every SNEAKERBOT_* variable is a real setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot.cli import build_parser
from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _cli_commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def test_compose_has_the_services(compose: dict) -> None:
    assert {"postgres", "bot", "worker", "selenium"} <= set(compose["services"])


def test_compose_commands_exist_in_cli(compose: dict) -> None:
    commands = _cli_commands()
    for name in ("bot", "worker"):
        assert compose["services"][name]["command"][0] in commands


def test_compose_env_vars_are_settings(compose: dict) -> None:
    fields = {f"SNEAKERBOT_{name.upper()}" for name in Settings.model_fields}
    for service in compose["services"].values():
        for key in (service.get("environment") or {}):
            if key.startswith("SNEAKERBOT_"):
                assert key in fields, f"{key} is not a Settings field"


def test_dockerfile_copies_existing_paths() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"

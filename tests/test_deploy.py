"""docker-compose.yml, the Dockerfile and deploy/Caddyfile cannot be run here (no Docker engine),
so check what can go wrong without one: the YAML parses, services wire to commands the CLI really
has, every SNEAKERBOT_* variable is a real setting, .env.example documents every setting with its
true default, the proxy reaches every bot replica on the port and path the bot serves, and the
image runs as a non-root user with a healthcheck. With a ``caddy`` binary on the PATH (Debian's
``caddy`` package) the Caddyfile is also validated and its JSON checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices

from bot.cli import build_parser
from bot.settings import Settings
from bot.web import WebhookConfig

ROOT = Path(__file__).resolve().parent.parent
CADDYFILE = ROOT / "deploy" / "Caddyfile"
ENV_EXAMPLE = ROOT / ".env.example"
# Variables the deployment reads that are not settings of the bot: Caddy's site address.
NOT_SETTINGS = {"PUBLIC_HOST"}
# Values that make the compose file's ${...} interpolations resolvable in a test.
SAMPLE_ENV = {"PUBLIC_HOST": "bot.example.org", "TELEGRAM_BOT_TOKEN": "123456:" + "A" * 35,
              "SNEAKERBOT_WEBHOOK_SECRET": "s" * 32}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?-][^}]*)?\}")
ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
SCALED = ("bot",)  # services that must run as several replicas


# --- fixtures and helpers ---------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def caddyfile() -> str:
    """The Caddyfile without comments."""
    return "\n".join(line.split("#", 1)[0].rstrip() for line in CADDYFILE.read_text().splitlines())


@pytest.fixture(scope="module")
def env_example() -> dict[str, tuple[str, bool]]:
    """{variable: (value, commented out)} of .env.example."""
    found: dict[str, tuple[str, bool]] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ENV_LINE.match(line.strip())
        if match:
            assert match.group(2) not in found, f"{match.group(2)} is in .env.example twice"
            found[match.group(2)] = (match.group(3), bool(match.group(1)))
    return found


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting from the environment of the test run."""
    for name in list(os.environ):
        if name.startswith("SNEAKERBOT_") or name == "TELEGRAM_BOT_TOKEN":
            monkeypatch.delenv(name)
    return monkeypatch


def _env_names(field: str) -> tuple[str, ...]:
    """The variables a setting is read from, the preferred one first."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (f"SNEAKERBOT_{field.upper()}",)


SETTING_VARS = {name for field in Settings.model_fields for name in _env_names(field)}


def _cli_commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def _interpolate(value: str, variables: dict[str, str] = SAMPLE_ENV) -> str:
    return INTERPOLATION.sub(lambda m: variables[m.group(1)], value)


def _environment(compose: dict, service: str) -> dict[str, str]:
    """A service's environment with the compose file's ${...} filled from SAMPLE_ENV."""
    env = compose["services"][service].get("environment") or {}
    return {key: _interpolate(str(value)) for key, value in env.items()}


def _settings_of(compose: dict, service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the service's process would build (its .env left out)."""
    for key, value in _environment(compose, service).items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)


def _webhook_path(caddyfile: str) -> str:
    matcher = re.search(r"@telegram\s*\{(.*?)\}", caddyfile, re.S)
    assert matcher, "deploy/Caddyfile has no @telegram matcher"
    path = re.search(r"^\s*path\s+(\S+)\s*$", matcher.group(1), re.M)
    assert path, "the @telegram matcher names no path"
    return path.group(1)


def _healthcheck_args(compose: dict, service: str) -> list[str]:
    test = compose["services"][service]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "sneakerbot"], f"{service}: the healthcheck is not `sneakerbot ...` in exec form"
    return test[2:]


# --- compose ----------------------------------------------------------------------
def test_compose_has_the_services(compose: dict) -> None:
    assert {"proxy", "postgres", "bot", "worker", "selenium"} <= set(compose["services"])


def test_compose_commands_exist_in_cli(compose: dict) -> None:
    commands = _cli_commands()
    for name in ("bot", "worker"):
        assert compose["services"][name]["command"][0] in commands


def test_compose_env_vars_are_settings(compose: dict) -> None:
    for name, service in compose["services"].items():
        for key in (service.get("environment") or {}):
            if key.startswith("SNEAKERBOT_"):
                assert key in SETTING_VARS, f"{name}: {key} is not a Settings field"


def test_compose_reads_only_settings_and_the_public_host(compose: dict, env_example: dict) -> None:
    """Every ${VAR} the compose file reads is a setting or PUBLIC_HOST, and .env.example names it."""
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(INTERPOLATION.findall(text))
    assert used, "the compose file reads nothing from .env: the webhook URL needs PUBLIC_HOST"
    for name in used:
        assert name in SETTING_VARS | NOT_SETTINGS, f"${{{name}}} is neither a setting nor PUBLIC_HOST"
        assert name in env_example, f".env.example does not tell to set {name}"


def test_bot_scales(compose: dict) -> None:
    """`docker compose up --scale bot=3`: no fixed name, no host port, the worker not started inside."""
    for name in SCALED:
        service = compose["services"][name]
        assert "container_name" not in service, f"{name} has a container_name: it cannot be scaled"
        assert not service.get("ports"), f"{name} publishes ports: a second replica could not bind them"
    assert _environment(compose, "bot")["SNEAKERBOT_START_WORKER_IN_BOT"] == "false"


def test_only_the_proxy_publishes_ports(compose: dict) -> None:
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"proxy"}
    ports = {str(port).split(":")[-1] for port in compose["services"]["proxy"]["ports"]}
    assert {"80", "443"} <= ports


def test_named_volumes_are_declared(compose: dict) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":", 1)[0]
            if source and not source.startswith((".", "/", "~", "$")):
                used.add(source)
    assert used - declared == set(), f"volumes used but not declared: {used - declared}"
    assert {"data", "caddy_data"} <= used


def test_proxy_mounts_the_caddyfile(compose: dict) -> None:
    proxy = compose["services"]["proxy"]
    assert proxy["image"].startswith("caddy:2")
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    assert "PUBLIC_HOST" in proxy["environment"]


def test_bot_runs_in_webhook_mode(compose: dict, clean_env: pytest.MonkeyPatch) -> None:
    """The bot's environment makes a valid webhook config, listening on all interfaces."""
    settings = _settings_of(compose, "bot", clean_env)
    config = WebhookConfig.from_settings(settings)
    assert config.host == "0.0.0.0"
    assert urlsplit(config.url).scheme == "https"
    assert urlsplit(config.url).hostname == SAMPLE_ENV["PUBLIC_HOST"]
    assert settings.start_worker_in_bot is False


def test_worker_serves_health(compose: dict, clean_env: pytest.MonkeyPatch) -> None:
    settings = _settings_of(compose, "worker", clean_env)
    assert settings.health_port is not None and settings.health_host == "0.0.0.0"
    assert compose["services"]["worker"]["command"] == ["worker"]


@pytest.mark.parametrize("service", ["bot", "worker"])
def test_healthchecks_are_cli_commands(compose: dict, service: str, clean_env: pytest.MonkeyPatch) -> None:
    """`sneakerbot healthcheck --port N` parses, and N is the port the service serves /healthz on."""
    if "healthcheck" not in _cli_commands():
        pytest.fail("`sneakerbot healthcheck` is not registered (bot/cli/health_commands.py)")
    args = build_parser().parse_args(_healthcheck_args(compose, service))
    assert args.command == "healthcheck"
    settings = _settings_of(compose, service, clean_env)
    serves = settings.webhook_listen_port if service == "bot" else settings.health_port
    assert args.port == serves, f"{service}: the healthcheck probes {args.port}, the service listens on {serves}"


# --- the proxy ----------------------------------------------------------------------
def test_caddy_upstream_is_every_bot_replica(compose: dict, caddyfile: str, clean_env: pytest.MonkeyPatch) -> None:
    """Caddy looks the `bot` service up by DNS (every replica) on the port the bot listens on."""
    upstream = re.search(r"^\s*dynamic\s+a\s+(\S+)\s+(\d+)", caddyfile, re.M)
    assert upstream, "the reverse proxy does not find its upstreams with `dynamic a <service> <port>`"
    assert upstream.group(1) == "bot" and "bot" in compose["services"]
    assert int(upstream.group(2)) == _settings_of(compose, "bot", clean_env).webhook_listen_port
    assert re.search(r"^\s*refresh\s+\d+s\s*$", caddyfile, re.M), "the replicas are not looked up again"
    for option in ("lb_policy", "lb_try_duration", "fail_duration", "unhealthy_status"):
        assert re.search(rf"^\s*{option}\s", caddyfile, re.M), f"the reverse proxy sets no {option}"


def test_caddy_proxies_the_webhook_path(compose: dict, caddyfile: str, clean_env: pytest.MonkeyPatch) -> None:
    """The path Caddy passes on is the one the bot serves the webhook at (SNEAKERBOT_WEBHOOK_URL)."""
    config = WebhookConfig.from_settings(_settings_of(compose, "bot", clean_env))
    assert _webhook_path(caddyfile) == config.path
    url = compose["services"]["bot"]["environment"]["SNEAKERBOT_WEBHOOK_URL"]
    assert url.startswith("https://${PUBLIC_HOST"), "the webhook URL is not built from PUBLIC_HOST"
    assert re.search(r"^\{\$PUBLIC_HOST\}\s*\{", caddyfile, re.M), "Caddy's site address is not {$PUBLIC_HOST}"


def test_caddy_proxies_nothing_else(caddyfile: str) -> None:
    """One reverse_proxy, under the webhook matcher; the rest (metrics, health) gets a 404."""
    assert len(re.findall(r"^\s*reverse_proxy\b", caddyfile, re.M)) == 1
    assert re.search(r"handle\s+@telegram\s*\{\s*(?:request_body\s*\{[^}]*\}\s*)?reverse_proxy\b", caddyfile)
    assert re.search(r"^\s*handle\s*\{\s*respond\s+404\s*\}", caddyfile, re.M)
    assert "/metrics" not in caddyfile


def test_caddy_log_leaves_out_the_webhook_secret(caddyfile: str) -> None:
    if not re.search(r"^\s*log\b", caddyfile, re.M):
        return  # no access log: nothing to leak
    assert re.search(r"request>headers>X-Telegram-Bot-Api-Secret-Token\s+delete", caddyfile)


@pytest.fixture(scope="module")
def caddy_json() -> dict:
    """The Caddyfile adapted to JSON by a real Caddy (skipped without the binary)."""
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("no caddy binary (apt-get install caddy)")
    env = {**os.environ, "PUBLIC_HOST": SAMPLE_ENV["PUBLIC_HOST"]}
    validated = subprocess.run([caddy, "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                               env=env, capture_output=True, text=True, timeout=60, check=False)
    assert validated.returncode == 0, validated.stderr[-2000:]
    adapted = subprocess.run([caddy, "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
    assert adapted.returncode == 0, adapted.stderr[-2000:]
    return json.loads(adapted.stdout)


def _proxy_routes(node: object, matchers: tuple = ()) -> list[tuple[tuple, dict]]:
    """Every reverse_proxy handler in Caddy's JSON, with the matchers of the routes around it."""
    found = []
    if isinstance(node, dict):
        if node.get("handler") == "reverse_proxy":
            found.append((matchers, node))
        inner = matchers + tuple(node.get("match") or ())
        for value in node.values():
            found += _proxy_routes(value, inner)
    elif isinstance(node, list):
        for value in node:
            found += _proxy_routes(value, matchers)
    return found


def test_caddy_adapts_to_one_webhook_proxy(caddy_json: dict, compose: dict, clean_env: pytest.MonkeyPatch) -> None:
    config = WebhookConfig.from_settings(_settings_of(compose, "bot", clean_env))
    server = next(iter(caddy_json["apps"]["http"]["servers"].values()))
    assert server["routes"][0]["match"] == [{"host": [SAMPLE_ENV["PUBLIC_HOST"]]}]
    (matchers, proxy), = _proxy_routes(caddy_json)
    assert {"method": ["POST"], "path": [config.path]} in matchers
    assert proxy["dynamic_upstreams"]["source"] == "a"
    assert proxy["dynamic_upstreams"]["name"] == "bot"
    assert int(proxy["dynamic_upstreams"]["port"]) == config.port
    assert proxy["health_checks"]["passive"]["fail_duration"] > 0
    assert proxy["load_balancing"]["try_duration"] > 0


# --- .env.example -------------------------------------------------------------------
def test_env_example_vars_are_settings(env_example: dict) -> None:
    for name in env_example:
        assert name in SETTING_VARS | NOT_SETTINGS, f".env.example sets {name}, which is not a setting"


def test_env_example_documents_every_setting(env_example: dict) -> None:
    missing = [field for field in Settings.model_fields if not set(_env_names(field)) & set(env_example)]
    assert missing == [], f".env.example does not document {missing}"


def test_env_example_shows_the_true_defaults(env_example: dict, clean_env: pytest.MonkeyPatch) -> None:
    """Each commented-out value, read as a setting, is that setting's default (empty: no default shown)."""
    defaults = Settings(_env_file=None)
    by_var = {name: field for field in Settings.model_fields for name in _env_names(field)}
    for name, (value, _commented) in env_example.items():
        if name in NOT_SETTINGS or value == "":
            continue
        clean_env.setenv(name, value)
        read = getattr(Settings(_env_file=None), by_var[name])
        clean_env.delenv(name)
        assert read == getattr(defaults, by_var[name]), f".env.example: {name}={value} is not the default"


def test_env_example_copied_unchanged_sets_nothing(env_example: dict, clean_env: pytest.MonkeyPatch) -> None:
    """`cp .env.example .env` alone changes no setting: no secret, and `make run` still starts the playground."""
    assert all(commented for _value, commented in env_example.values()), "a line of .env.example is not commented out"
    assert Settings(_env_file=ENV_EXAMPLE).model_dump() == Settings(_env_file=None).model_dump()
    for secret in ("TELEGRAM_BOT_TOKEN", "SNEAKERBOT_WEBHOOK_SECRET"):
        assert env_example[secret][0] == "", f".env.example holds a value for the secret {secret}"


# --- Dockerfile -----------------------------------------------------------------------
def _dockerfile_lines() -> list[str]:
    """Instructions, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_copies_existing_paths() -> None:
    for line in _dockerfile_lines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    lines = _dockerfile_lines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "the Dockerfile has no USER: the processes would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the last USER is root"
    created = re.search(r"useradd\b[^&]*--uid (\d+)", " ".join(lines))
    assert created and created.group(1) == user, "USER is not the uid the Dockerfile creates"
    assert re.search(rf"chown [^&]*\b(sneakerbot|{user})\S* /data\b", " ".join(lines)), "/data is not the user's"
    volume = next(i for i, line in enumerate(lines) if line.startswith("VOLUME"))
    chown = next(i for i, line in enumerate(lines) if "chown" in line)
    assert chown < volume, "/data is chowned after VOLUME: a new volume would not be the user's"


def test_dockerfile_healthcheck_is_a_cli_command() -> None:
    line = next((line for line in _dockerfile_lines() if line.startswith("HEALTHCHECK ")), None)
    assert line, "the Dockerfile has no HEALTHCHECK"
    for option in ("--interval=", "--timeout=", "--start-period="):
        assert option in line, f"HEALTHCHECK sets no {option.rstrip('=')}"
    command = json.loads(line.split(" CMD ", 1)[1])
    assert command[0] == "sneakerbot"
    if "healthcheck" not in _cli_commands():
        pytest.fail("`sneakerbot healthcheck` is not registered (bot/cli/health_commands.py)")
    assert build_parser().parse_args(command[1:]).command == "healthcheck"


def test_dockerfile_env_vars_are_settings() -> None:
    for line in _dockerfile_lines():
        if line.startswith("ENV "):
            for name in re.findall(r"\b(SNEAKERBOT_[A-Z0-9_]+)=", line):
                assert name in SETTING_VARS, f"the Dockerfile sets {name}, which is not a setting"

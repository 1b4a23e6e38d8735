"""One typed settings object for every part of sneakerbot.

Read once from the environment (prefix ``SNEAKERBOT_``) and ``.env``. Secrets have
no default and are never logged: ``telegram_bot_token`` is a ``SecretStr``.
``ml/`` and ``scraper/`` never import this module: entry points pass them plain
values, so those packages stay usable on their own.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTER_MODEL_DIR = REPO_ROOT / "models" / "starter"


class Settings(BaseSettings):
    """Everything configurable, with safe defaults for a local single-machine run."""

    model_config = SettingsConfigDict(
        env_prefix="SNEAKERBOT_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- where things live -------------------------------------------------
    data_dir: Path = Path("./var")
    model_dir: Path | None = None  # default: <data_dir>/models
    database_url: str | None = None  # default: SQLite file under data_dir
    # How long one database transaction on the request path is retried while the database is
    # away (PostgreSQL restarting, SQLite locked by another writer) before the user is told
    # to try again in a moment (bot.store.retry).
    db_retry_seconds: float = 30.0
    starter_model_dir: Path = STARTER_MODEL_DIR

    # --- ML ----------------------------------------------------------------
    backbone: str = "efficientnet_lite0"
    top_k: int = 3
    # Overrides for the thresholds calibrated on val and stored with a model;
    # None means "use the model's own".
    sneaker_threshold: float | None = None
    unsure_threshold: float | None = None
    familiar_threshold: float | None = None  # under the footwear threshold but this familiar: "unsure"
    inference_threads: int = 2

    # --- Telegram ----------------------------------------------------------
    telegram_bot_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TELEGRAM_BOT_TOKEN", "SNEAKERBOT_TELEGRAM_BOT_TOKEN"),
    )
    bot_api_url: str = "https://api.telegram.org"
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    rate_limit_per_minute: int = 20
    max_download_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    retention_days: int = 7
    search_url_template: str = "https://www.google.com/search?tbm=shop&q={query}"
    playground_host: str = "127.0.0.1"
    playground_port: int = 8081
    playground_token: str = "123456:playground"  # the token the bot uses against the playground
    telegram_overall_rate: float = 30.0  # messages/s across chats (Telegram's limit); 0 turns it off
    concurrent_updates: int = 64  # updates handled at once; inference has its own thread pool
    telegram_connection_pool: int = 8  # HTTP connections to the Bot API server
    telegram_http: str = "aiohttp"  # the Bot API transport: "aiohttp" (cheaper per call) or "httpx" (PTB's own)
    poll_timeout_s: int = 10  # getUpdates long-poll timeout
    # Bot API calls and downloads (getUpdates keeps its own): timeouts, and retries (bot/telegram_retry.py)
    telegram_read_timeout_s: float = 5.0  # no answer within this is a timeout (a send is then not repeated)
    telegram_connect_timeout_s: float = 5.0
    telegram_retries: int = 3  # extra attempts after a failure that may be retried; 0 turns retries off
    telegram_retry_backoff_s: float = 0.5  # pause before the first retry; doubles for each next one
    telegram_max_retry_after_s: float = 30.0  # a 429 asking for a longer wait fails instead of waiting
    retention_interval_s: int = 3600  # how often expired pending photos are purged

    # --- scraper -----------------------------------------------------------
    bing_url: str = "https://www.bing.com/images/search"
    google_url: str = "https://www.google.com/search"
    selenium_url: str | None = None
    scraper_allow_private: bool = False
    scraper_sources: list[str] = ["bing", "google", "google-selenium"]
    scraper_concurrency: int = 8
    scraper_timeout_s: float = 15.0
    scraper_max_bytes: int = 15 * 1024 * 1024
    scraper_min_side: int = 64
    scraper_host_delay_s: float = 0.2
    scraper_retries: int = 2  # extra attempts after a connection error, 429 or 5xx
    scraper_max_items: int = 100  # search results per run when --max is not given
    # pHash Hamming distance (of 64 bits) of a near-duplicate, which must also match in colour
    # (scraper.images.is_near_duplicate; 8 measured by bench.dedupe)
    scraper_phash_distance: int = 8
    scraper_colour_distance: float = 0.08  # colour-signature distance (0-1) under which a pHash match is a copy
    scraper_footwear_check: bool = True  # send images the backbone does not see as footwear to review
    scraper_classifier_concurrency: int = 2  # parallel footwear checks (its ONNX session is thread-safe)
    chromium_path: str = "/usr/bin/chromium"
    chromedriver_path: str = "/usr/bin/chromedriver"

    # --- learning loop -----------------------------------------------------
    retrain_min_corrections: int = 20
    retrain_cron_hour: int = 3
    scrape_daily_budget: int = 200
    memory_agree_users: int = 3
    start_worker_in_bot: bool = True
    memory_match_threshold: float = 0.94  # cosine similarity of "the same or near-identical photo"
    memory_max_weight: float = 0.9  # largest share of an answer the memory may take
    promotion_tolerance: float = 0.0  # a candidate may lose this much top-1 overall and still be promoted
    promotion_class_tolerance: float = 0.05  # ... and this much on any one class, unless chance explains it
    promotion_new_class_tolerance: float = 0.01  # overall top-1 a candidate that adds classes may lose
    retrain_check_seconds: int = 30  # how often the worker looks for due work (corrections, requests)
    retrain_steps: int = 300  # full-batch steps of a head retrain (seconds on carried features)
    base_dataset_dir: Path | None = None  # the photos the current model was trained from, if on this machine
    model_poll_seconds: float = 3.0  # how often a bot process checks the registry for a new model
    scrape_cron_hour: int = 4
    scrape_classes_per_run: int = 3  # most-corrected classes the daily scrape tops up

    # --- webhook mode, health and metrics (bot/web.py) -----------------------
    # The public HTTPS URL Telegram POSTs updates to; set, ``sneakerbot run`` uses a webhook
    # instead of long polling. The bot listens on its path at webhook_listen_host:port (behind
    # a TLS-terminating proxy); /healthz, /readyz and /metrics are served there too.
    webhook_url: str | None = None
    webhook_listen_host: str = "127.0.0.1"  # "0.0.0.0" in a container
    webhook_listen_port: int = 8443
    # Telegram sends it in X-Telegram-Bot-Api-Secret-Token; required in webhook mode, never logged
    # (16-256 characters: A-Z, a-z, 0-9, _ and -).
    webhook_secret: SecretStr | None = None
    # Replicas claim each update in the database; a claim unfinished this long (its replica died) is taken over.
    webhook_claim_lease_s: float = 60.0
    # In long-polling mode, /healthz, /readyz and /metrics on this port (unset: not served);
    # ``sneakerbot worker`` serves its own there too (bot/jobs/health.py).
    health_port: int | None = None
    health_host: str = "127.0.0.1"
    log_format: Literal["text", "json"] = "text"  # "json": one JSON object per line (bot.logging_setup)
    log_level: str = "INFO"  # any logging level name; ``sneakerbot -v`` still means DEBUG

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        """A level name ``logging`` knows, in any case: a typo fails at start instead of logging at INFO."""
        level = value.strip().upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _parse_ids(cls, value: object) -> object:
        """Accept "1,2,3" as well as a JSON list, since that is how people write env vars."""
        if isinstance(value, str):
            return frozenset(int(part) for part in value.replace(";", ",").split(",") if part.strip())
        if isinstance(value, int):
            return frozenset({value})
        return value

    @cached_property
    def models_path(self) -> Path:
        """Directory of the model registry's files."""
        return self.model_dir or self.data_dir / "models"

    @cached_property
    def images_path(self) -> Path:
        """Directory of labelled images: ``images/<label>/<sha1>.jpg``."""
        return self.data_dir / "images"

    @cached_property
    def cache_path(self) -> Path:
        """Embedding cache and other rebuildable files."""
        return self.data_dir / "cache"

    @cached_property
    def db_url(self) -> str:
        """The SQLAlchemy URL, SQLite under ``data_dir`` unless one is configured."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sneakerbot.db').resolve()}"

    def threshold_overrides(self) -> dict[str, float | None]:
        """The verdict thresholds to force on served models (None keeps each model's calibrated one)."""
        return {"footwear": self.sneaker_threshold, "unsure": self.unsure_threshold,
                "familiar": self.familiar_threshold}

    def ensure_dirs(self) -> None:
        """Create the writable directories; called by entry points, never at import."""
        for path in (self.data_dir, self.models_path, self.images_path, self.cache_path):
            path.mkdir(parents=True, exist_ok=True)


def get_settings(**overrides: Any) -> Settings:
    """Build the settings; entry points call this once and pass the object down."""
    return Settings(**overrides)

# One image for the bot and the worker. CPU-only torch keeps it small:
# the CPU wheels are installed first, so `pip install .` finds torch satisfied.
# Debian bookworm, pinned: its postgresql-client (15) matches the compose file's PostgreSQL, and
# `sneakerbot backup` / `restore` run its pg_dump / pg_restore.
FROM python:3.11-slim-bookworm

# The bot sets glibc's arenas and mmap threshold itself (bot/native_memory.py); MALLOC_ARENA_MAX or
# MALLOC_MMAP_THRESHOLD_ set here would override it.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium chromium-driver postgresql-client \
    && rm -rf /var/lib/apt/lists/*

# The processes run as this user, never as root. The uid is fixed so a host directory can be
# prepared for it (`chown 10001:10001 backups`); /data, the volume, is its own, and so is its home
# (ONNX Runtime graphs are cached under ~/.cache, per container).
RUN groupadd --system --gid 10001 sneakerbot \
    && useradd --system --uid 10001 --gid sneakerbot --create-home --home-dir /home/sneakerbot \
       --shell /usr/sbin/nologin sneakerbot \
    && mkdir -p /data \
    && chown sneakerbot:sneakerbot /data

WORKDIR /app
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY ml ./ml
COPY scraper ./scraper
COPY models ./models
RUN pip install .

# The package is installed into site-packages; the starter model (and the features it carries) stays here.
# In a container the bot's web server (webhook, health, metrics) must listen beyond loopback.
ENV SNEAKERBOT_DATA_DIR=/data SNEAKERBOT_STARTER_MODEL_DIR=/app/models/starter \
    SNEAKERBOT_WEBHOOK_LISTEN_HOST=0.0.0.0 SNEAKERBOT_HEALTH_HOST=0.0.0.0
# Declared after the chown: a new named volume starts as a copy of /data, owned by sneakerbot.
VOLUME ["/data"]
USER 10001:10001

# GET /healthz on 127.0.0.1: SNEAKERBOT_HEALTH_PORT when set, else the webhook port in webhook
# mode (a polling bot without SNEAKERBOT_HEALTH_PORT has nothing to check and reports unhealthy).
# /healthz answers before the model loads, so the start period only covers Python's imports.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["sneakerbot", "healthcheck"]
ENTRYPOINT ["sneakerbot"]
CMD ["run"]

# One image for the bot and the worker. CPU-only torch keeps it small:
# the CPU wheels are installed first, so `pip install .` finds torch satisfied.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium chromium-driver \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY ml ./ml
COPY scraper ./scraper
COPY models ./models
RUN pip install .

# The package is installed into site-packages; the starter model (and the features it carries) stays here.
ENV SNEAKERBOT_DATA_DIR=/data SNEAKERBOT_STARTER_MODEL_DIR=/app/models/starter
VOLUME ["/data"]
ENTRYPOINT ["sneakerbot"]
CMD ["run"]

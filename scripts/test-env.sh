# Sourced by `make test`: where the tests find the services scripts/services.sh started.
export SNEAKERBOT_TEST_POSTGRES_URL="${SNEAKERBOT_TEST_POSTGRES_URL:-postgresql+psycopg://sneakerbot:sneakerbot@127.0.0.1:5432/sneakerbot_test}"
export SNEAKERBOT_TEST_CHROMIUM="${SNEAKERBOT_TEST_CHROMIUM:-$(command -v chromium || true)}"
export SNEAKERBOT_TEST_CHROMEDRIVER="${SNEAKERBOT_TEST_CHROMEDRIVER:-$(command -v chromedriver || true)}"

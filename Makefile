# sneakerbot: `make run` starts the bot (the local playground without a token),
# `make test` runs the whole suite. Both set up everything they need first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install services worker starter-model bench lint clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is needed ($(PYTHON) not found)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/sneakerbot run

worker: $(STAMP)
	$(VENV)/bin/sneakerbot worker

services:
	bash scripts/services.sh

test: $(STAMP) services
	. scripts/test-env.sh && $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

starter-model: $(STAMP)
	bash scripts/build-starter-model.sh

bench: $(STAMP)
	$(PY) -m bench.all

clean:
	rm -rf var .pytest_cache

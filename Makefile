# sneakerbot: `make run` starts the bot (the local playground without a token),
# `make test` runs the whole suite. Both set up everything they need first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install services worker starter-model bench lint clean audit

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

# Lint: ruff (rules in pyproject.toml) over the code and the tests, then mypy (its files and
# per-module settings in pyproject.toml). Both run, so one report shows every finding; it
# fails if either found something. Uses only what `make install` installed.
lint: $(STAMP)
	@status=0; \
	$(VENV)/bin/ruff check bot ml scraper bench tests || status=1; \
	$(PY) -m mypy || status=1; \
	exit $$status

starter-model: $(STAMP)
	bash scripts/build-starter-model.sh

bench: $(STAMP)
	$(PY) -m bench.all

# Known vulnerabilities in the installed packages (pip-audit over .venv, the project itself
# skipped). Fails only on a real finding; when the vulnerability service cannot be reached
# (network errors, or it answers for no package) it warns and succeeds. AUDIT_ARGS passes
# options on, e.g. AUDIT_ARGS='-s osv' or AUDIT_ARGS='--ignore-vuln GHSA-xxxx'.
AUDIT_ARGS ?=
define AUDIT_REPORT_PY
import json, re, sys
report_path, log_path, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = open(log_path, encoding="utf-8", errors="replace").read()
try:
    deps = json.load(open(report_path, encoding="utf-8"))["dependencies"]
except (OSError, ValueError, KeyError, TypeError):
    deps = None
if deps is None:
    network = r"ConnectionError|NameResolution|Max retries|[Tt]imed? ?out|SSLError|ProxyError|Network is unreachable|Temporary failure"
    if re.search(network, log):
        print("WARNING: make audit: the vulnerability service could not be reached; nothing was audited", file=sys.stderr)
        sys.exit(0)
    sys.stderr.write(log)
    sys.exit(rc or 1)
found = [(d["name"], d.get("version", "?"), v) for d in deps for v in d.get("vulns") or []]
for name, version, vuln in found:
    fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed release"
    print(f"VULNERABLE: {name} {version}: {vuln.get('id')} (fixed in: {fixed})")
if found:
    sys.exit(1)
audited = sum("vulns" in d for d in deps)
if audited == 0:
    print(f"WARNING: make audit: the vulnerability service answered for none of {len(deps)} packages; nothing was audited", file=sys.stderr)
else:
    skipped = len(deps) - audited
    print(f"make audit: no known vulnerabilities in {audited} packages" + (f" ({skipped} could not be audited)" if skipped else ""))
endef

audit: export AUDIT_REPORT = $(AUDIT_REPORT_PY)
audit: $(STAMP)
	@$(PY) -m pip_audit --version >/dev/null 2>&1 || $(PY) -m pip install -q pip-audit \
		|| { echo "WARNING: make audit: pip-audit could not be installed; nothing was audited" >&2; exit 0; }; \
	report=$$(mktemp) log=$$(mktemp); \
	$(PY) -m pip_audit --skip-editable --progress-spinner off -f json -o "$$report" $(AUDIT_ARGS) 2>"$$log"; \
	rc=$$?; $(PY) -c "$$AUDIT_REPORT" "$$report" "$$log" "$$rc"; status=$$?; rm -f "$$report" "$$log"; exit $$status

clean:
	rm -rf var .pytest_cache

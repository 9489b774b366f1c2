# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BILLING_HOME ?= $(CURDIR)/.billing
export BILLING_HOME
# Nothing leaves the machine (also set by the code itself before these libraries load).
export DAGSTER_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export GX_ANALYTICS_ENABLED := false

.PHONY: install demo test ui bench clean chromium

# The virtual environment is made once and reinstalled only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/billing-pipeline demo run

# Headless Chromium renders the month-close report in tests (Debian's package, installed when missing).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)

# Two passes: everything on the embedded PostgreSQL 18, then the tests not marked slow on a throwaway
# system PostgreSQL 15 cluster (README "A real PostgreSQL"). Pass 2 fails, never skips, without it.
test: install chromium
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q
	BILLING_TEST_SERVER=pg15 $(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "not slow" -p no:cacheprovider

ui: install
	$(BIN)/billing-pipeline ui

bench: install
	@for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .billing

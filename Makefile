# Two commands for a newcomer: `make study` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STUDY_OUT ?= results/embedded
PYTEST_ARGS ?=

.PHONY: study test venv clean-cache

venv: $(STAMP)

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

study: $(STAMP)
	$(BIN)/gad notebook notebooks/00_quickstart.ipynb $(STUDY_OUT)
	$(BIN)/gad embed $(STUDY_OUT)/table_image_auroc.md README.md

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-cache:
	rm -rf $${GADLIB_CACHE:-$$HOME/.cache/gadlib}

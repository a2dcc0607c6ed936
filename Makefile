# Two commands for a newcomer: `make study` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STUDY_OUT ?= results/embedded
PYTEST_ARGS ?=

.PHONY: study study-extended test venv clean-cache validate bench report

venv: $(STAMP)

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

study: $(STAMP)
	$(BIN)/gad study --out $(STUDY_OUT)
	$(BIN)/gad headline --results $(STUDY_OUT)
	$(BIN)/gad embed $(STUDY_OUT)/headline.md README.md --marker headline-table
	$(BIN)/gad embed $(STUDY_OUT)/quickstart/table_image_auroc.md docs/quickstart.md
	$(BIN)/gad embed $(STUDY_OUT)/baselines/table_baselines.md docs/baselines.md --marker baselines-table
	$(BIN)/gad embed $(STUDY_OUT)/cross_domain/table_image_auroc.md docs/cross_domain.md --marker cross-domain-table
	$(BIN)/gad embed $(STUDY_OUT)/cross_domain/table_ablation.md docs/cross_domain.md --marker ablation-table
	$(BIN)/gad embed $(STUDY_OUT)/normal_abnormal/table_gain.md docs/normal_abnormal.md --marker gain-table
	$(BIN)/gad embed $(STUDY_OUT)/normal_abnormal/table_ablation.md docs/normal_abnormal.md --marker nagl-ablation-table
	$(BIN)/gad embed $(STUDY_OUT)/normal_abnormal/table_inctrl_terms.md docs/normal_abnormal.md --marker inctrl-terms-table
	$(BIN)/gad embed $(STUDY_OUT)/normal_abnormal/table_published.md docs/normal_abnormal.md --marker published-table
	$(BIN)/gad embed $(STUDY_OUT)/residual_space/table_alignment.md docs/residual_space.md --marker alignment-table
	$(BIN)/gad embed $(STUDY_OUT)/three_gaps/table_summary.md docs/three_gaps.md --marker three-gaps-table
	$(BIN)/gad embed $(STUDY_OUT)/three_gaps/table_gain.md docs/three_gaps.md --marker vod-gain-table
	$(BIN)/gad embed $(STUDY_OUT)/three_gaps/table_references.md docs/three_gaps.md --marker synthetic-references-table
	$(BIN)/gad embed $(STUDY_OUT)/study_time.md docs/engine.md --marker study-time-table

# What `make study` leaves out to fit 45 minutes (README, "Two commands"): the three-gap study's VOD readings
# inside kNN, ResAD, InCTRL-vision and NAGL, and the scaling study. Reuses `make study`'s cells when run after it.
study-extended: $(STAMP)
	$(BIN)/gad study --extended --out $(STUDY_OUT)
	$(BIN)/gad embed $(STUDY_OUT)/three_gaps_readings/table_summary.md docs/three_gaps.md --marker readings-table
	$(BIN)/gad embed $(STUDY_OUT)/three_gaps_readings/table_gain.md docs/three_gaps.md --marker readings-gain-table
	$(BIN)/gad embed $(STUDY_OUT)/scaling/table_verdict.md docs/scaling.md --marker scaling-table
	$(BIN)/gad embed $(STUDY_OUT)/study_extended_time.md docs/engine.md --marker study-extended-time-table

# The study as a static HTML site, from the committed results and docs/ (runs no notebook).
report: $(STAMP)
	$(BIN)/gad report --out build/report

bench: $(STAMP)
	$(BIN)/gad bench --out results/bench
	$(BIN)/gad bench --methods knn,resad --threads 1,2 --out results/bench
	$(BIN)/gad bench --search knn,resad --out results/bench
	$(BIN)/gad bench --study --out results/bench
	$(BIN)/gad bench --layouts --out results/bench
	$(BIN)/gad embed results/bench/bench.md docs/engine.md --marker bench-table
	$(BIN)/gad embed results/bench/search.md docs/engine.md --marker search-table
	$(BIN)/gad embed results/bench/threads.md docs/engine.md --marker threads-table
	$(BIN)/gad embed results/bench/layouts.md docs/engine.md --marker layouts-table

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-cache:
	rm -rf $${GADLIB_CACHE:-$$HOME/.cache/gadlib}

# The checks that chose the trained methods' defaults on held-out source categories (not part of `make study`).
validate: $(STAMP)
	$(BIN)/gad study --validation --out $(STUDY_OUT)

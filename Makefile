# Learned music editor. The first two commands a newcomer runs: `make demo`, `make test`.
# Every target depends on `setup`, which builds .venv once per requirements.txt content.
SHELL := /bin/bash
PY := .venv/bin/python
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := .venv/.setup-stamp-$(REQ_HASH)

DATA ?= training_data
RUN ?= default
JOBS ?= 2
INPUT ?=

.PHONY: setup test demo demo-data align pretrain finetune infer bench smoke clean-venv

setup: $(STAMP)

# torch first: the pinned CPU wheel lies on local disk; an unpinned torch pulled by
# another package would be a multi-GB CUDA build. natten builds against that torch.
$(STAMP): requirements.txt
	@echo "setup: creating .venv and installing pinned dependencies (about 75 s)"
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip setuptools wheel
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q --no-build-isolation natten==0.21.7
	.venv/bin/pip install -q -r requirements.txt
	rm -f .venv/.setup-stamp-*
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

demo: setup
	@echo "demo: the full pipeline (demo corpus -> align -> pretrain -> finetune -> infer) is not complete yet;"
	@echo "demo: running the stages that exist. See README.md 'Status'."
	$(PY) -m datasets.features ../shared/data/music/race1-jt.ogg

bench: setup
	$(PY) bench/features.py

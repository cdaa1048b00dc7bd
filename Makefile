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

.PHONY: setup test demo demo-data align pretrain finetune adapt infer review bench

setup: $(STAMP)

# torch first: the pinned CPU wheel lies on local disk; an unpinned torch pulled by
# another package would be a multi-GB CUDA build. natten builds against that torch.
$(STAMP): requirements.txt
	@echo "setup: creating .venv and installing pinned dependencies (about 75 s)"
	@# MIDI demo songs use FluidSynth (+ pretty_midi's bundled GM soundfont) where the system
	@# library can be installed (root + apt); otherwise they fall back to additive synthesis.
	-@ldconfig -p 2>/dev/null | grep -q libfluidsynth || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q --no-install-recommends libfluidsynth3 >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends libfluidsynth3 >/dev/null 2>&1; }; } ; } || \
	  echo "setup: libfluidsynth3 not installed (needs root + apt); MIDI demo songs use the additive fallback"
	@# The review page's browser test drives Debian's chromium with its matching chromedriver
	@# (about 60 s and 410 MB the first time); without them that test is skipped.
	-@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }; } ; } || \
	  echo "setup: chromium not installed (needs root + apt); the review page's browser test is skipped"
	python3 -m venv .venv
	.venv/bin/pip install -q setuptools wheel
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q --no-build-isolation natten==0.21.7
	.venv/bin/pip install -q -r requirements.txt
	@# numba compiles librosa's gufuncs on first use; two worker processes compiling at once
	@# corrupt the cache (numba#10128: segfaults from then on). Compile once, here.
	.venv/bin/python -m datasets.warmup
	rm -f .venv/.setup-stamp-*
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q --durations=15 tests

# ---- the pipeline: DATA=DIR (default training_data, never written) RUN=NAME (runs/NAME) ----
align: setup
	$(PY) -m alignment.run --data $(DATA) --run $(RUN) --jobs $(JOBS)

# Both continue the run's own last checkpoint (a killed run resumes); ARGS=--restart starts over.
pretrain: setup
	$(PY) -m pretrain.train --run $(RUN) $(ARGS)

finetune: setup
	$(PY) -m rl.train --run $(RUN) $(ARGS)

# After make align has labelled corrected pairs (e.g. edited/NAME.plan.json): the run's newest
# checkpoint learns them (upweighted) beside the old pairs -> runs/RUN/checkpoints/adapt_last.pt.
adapt: setup
	$(PY) -m pretrain.adapt --run $(RUN) $(ARGS)

# make infer INPUT=song.wav [CHECKPOINT=path] [OUT=dir] [ARGS="--target-duration 180"]
# INPUT=folder/ edits every song in it (agent/batch.py: JOBS at once, Ray tasks when RAY_ADDRESS is set)
INFER_ARGS = $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)",--newest-in runs) $(if $(OUT),--out "$(OUT)") $(ARGS)
infer: setup
	@if [ -z "$(INPUT)" ]; then echo "error: give the song to edit: make infer INPUT=song.wav" >&2; exit 2; fi
	@if [ -d "$(INPUT)" ]; then set -x; $(PY) -m agent.batch "$(INPUT)" --jobs $(JOBS) $(INFER_ARGS); \
	else set -x; $(PY) -m agent.infer "$(INPUT)" $(INFER_ARGS); fi

# make review OUT=runs/infer/song [DATA=training_data] [ARGS="--port 8765 --no-browser"]
review: setup
	@if [ -z "$(OUT)" ]; then echo "error: give the folder make infer wrote: make review OUT=runs/infer/song" >&2; exit 2; fi
	$(PY) -m agent.review "$(OUT)" --data $(DATA) $(ARGS)

# ---- the demo: a corpus of generated songs edited by a scripted persona, then every stage ----
DEMO_DATA := runs/demo/data
PERSONA ?= tight

demo-data: setup
	$(PY) -m datasets.demo.build --out $(DEMO_DATA) --persona $(PERSONA) --jobs $(JOBS)

# Each stage reruns only when its inputs changed: alignment skips up-to-date labels itself;
# training stages leave a stamp that depends on the labels and on the code they run.
DEMO_RUN := runs/demo
DEMO_LABELS = $(filter-out %/index.json %/train.json,$(wildcard $(DEMO_RUN)/labels/*.json))
TRAIN_CODE := $(wildcard datasets/*.py envs/*.py agent/*.py)

demo: demo-data
	$(MAKE) --no-print-directory align DATA=$(DEMO_DATA) RUN=demo
	$(MAKE) --no-print-directory $(DEMO_RUN)/.finetune-done
	$(PY) -m agent.demo_infer --run demo

# A stage continues its own last checkpoint when that is newer than every input (a killed
# run resumes); one older than an input belongs to a run of earlier labels or code, and
# the stage starts over (--restart). A restarted run killed before its first save
# restarts again: its checkpoint is still the old one.
restart_if_older = $$(if [ -f $(1) ] && [ -n "$$(find $(2) -newer $(1) -print -quit)" ]; then echo --restart; fi)

$(DEMO_RUN)/.pretrain-done: $(DEMO_LABELS) $(TRAIN_CODE) $(wildcard pretrain/*.py)
	$(PY) -m pretrain.train --run demo $(call restart_if_older,$(DEMO_RUN)/checkpoints/bc_last.pt,$^)
	touch $@

$(DEMO_RUN)/.finetune-done: $(DEMO_RUN)/.pretrain-done $(wildcard rl/*.py)
	$(PY) -m rl.train --run demo $(call restart_if_older,$(DEMO_RUN)/checkpoints/ppo_last.pt,$^)
	touch $@

bench: setup
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

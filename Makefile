# The two set-up commands of the README:
#   make demo   installs, generates the synthetic ambiguous dataset, trains a short DC3 run, the
#               same run with L_A ranking by uncertainty, and the run without DC3, and prints the
#               paper's Tables 2 and 4 for them
#   make test   installs and runs the test suite
export PYTHON ?= python3
export ML_DATA ?= data
export TF_CPP_MIN_LOG_LEVEL ?= 2
DEMO_DIR ?= experiments/demo
# Test processes (pytest-xdist); each file runs whole in one of them (--dist loadfile). Keep it at
# the machine's core count: every worker imports TensorFlow and trains small networks.
TEST_WORKERS ?= 2
# A short run that fits a laptop CPU in a few minutes; real runs use the paper's command lines.
DEMO_FLAGS ?= --filters 16 --repeat 2 --batch 32 --train_kimg 12 --report_kimg 4 --save_kimg 4 \
	--bn_momentum 0.99 --lr 0.03

.PHONY: install install-dev demo data test bench clean-demo

# The repository itself is installed in editable mode (pyproject.toml), so `libml`, `scripts` and
# the method scripts import from any folder.
install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --editable .

install-dev:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --editable .

data: install
	./generate_datasets.sh

demo: data
	$(PYTHON) mean_teacher.py --dataset synthetic.1@-1-10 --train_dir $(DEMO_DIR) $(DEMO_FLAGS)
	$(PYTHON) mean_teacher.py --dataset synthetic.1@-1-10 --train_dir $(DEMO_DIR) $(DEMO_FLAGS) \
		--ambiguity_rank uncertainty
	$(PYTHON) mean_teacher.py --dataset synthetic.1@-1-10 --train_dir $(DEMO_DIR) $(DEMO_FLAGS) \
		--combined_output 0 --wou 0 --wol 0
	$(PYTHON) scripts/report.py $(DEMO_DIR) --split val --out $(DEMO_DIR)/tables

test: install-dev
	$(PYTHON) -m pytest tests -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

clean-demo:
	rm -rf $(DEMO_DIR)

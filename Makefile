# make train  — train the default experiment (ARGS="data=multimnist model=lenet ..." for overrides)
# make test   — lint (ruff, configured in pyproject.toml), then run the test suite (PYTEST_ARGS="-k resume" to select)
# make reproduce-multimnist — every method × 3 seeds × sharpness none/fmtl on MultiMNIST built from
#   ../shared/data/mnist, then the mtl-report table and Pareto plot (METHODS=..., SAMS=none,sam,fmtl,
#   JOBS=2 for two runs at a time)
# make reproduce-fmtl — F-MTL's MultiMNIST protocol sized for the CPU (experiment=multimnist_fmtl_cpu):
#   EW, MGDA, PCGrad, CAGrad, IMTL-G, Nash-MTL × sam none/fmtl × 5 seeds from ../shared/data/mnist,
#   then the report with each method's paired fmtl − none differences (about 2 h with JOBS=2)
# make reproduce-synthetic — MMoE's synthetic benchmark: shared-bottom vs MMoE × task correlation × SEEDS
# make reproduce-adult — UCI Adult: shared-bottom, MMoE, CGC, PLE × EW, MGDA, PCGrad × SEEDS, then the report
# All create .venv and install mtl into it when missing. On a machine without CUDA the CPU build
# of torch is installed first; choose another build with TORCH=..., e.g. TORCH="torch==2.5.1".

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
ARGS ?=
PYTEST_ARGS ?=
METHODS ?= glob(*,exclude=stl)
SAMS ?= none,fmtl
SEEDS ?= 0,1,2
JOBS ?= 1
SWEEP ?= outputs/reproduce/multimnist
FMTL_METHODS ?= ew,mgda,pcgrad,cagrad,imtl_g,nash_mtl
FMTL_SEEDS ?= 0,1,2,3,4
FMTL_SWEEP ?= outputs/reproduce/fmtl
SYNTHETIC_SWEEP ?= outputs/reproduce/synthetic
ADULT_SWEEP ?= outputs/reproduce/adult

.PHONY: train test install clean reproduce-multimnist reproduce-fmtl reproduce-synthetic reproduce-adult

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

train: $(BIN)/.installed
	$(BIN)/mtl-train $(ARGS)

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# JOBS runs at a time (joblib), one thread each: the runs are deterministic in their seed. A run
# that fails (F-MTL refuses the double-sampling MoDo and SDMGrad) does not stop the sweep ("-"), and
# the report lists it as failed with its last log line; the target fails when no run finished. With
# sam=none among SAMS the report adds each run's difference from its sam=none twin of equal seed.
reproduce-multimnist: $(BIN)/.installed
	-OMP_NUM_THREADS=1 $(BIN)/mtl-train -m hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) experiment=multimnist data.root=../shared/data/mnist \
	  data.splits_from=test_set data.download=false "data.pairs_per_digit={train: 5, val: 1, test: 1}" \
	  trainer.max_epochs=2 trainer.enable_progress_bar=false "~callbacks.rich_progress_bar" \
	  "method=$(METHODS)" "sam=$(SAMS)" "seed=$(SEEDS)" hydra.sweep.dir=$(SWEEP) $(ARGS)
	$(BIN)/mtl-report $(SWEEP) --group method sam $(if $(findstring none,$(SAMS)),--versus sam=none) --out $(SWEEP)/report

# seeds vary slowest, so a sweep cut short leaves whole seeds of every method and sam
reproduce-fmtl: $(BIN)/.installed
	-OMP_NUM_THREADS=1 $(BIN)/mtl-train -m hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) experiment=multimnist_fmtl_cpu \
	  data.root=../shared/data/mnist data.download=false trainer.enable_progress_bar=false "~callbacks.rich_progress_bar" \
	  "seed=$(FMTL_SEEDS)" "method=$(FMTL_METHODS)" sam=none,fmtl hydra.sweep.dir=$(FMTL_SWEEP) $(ARGS)
	$(BIN)/mtl-report $(FMTL_SWEEP) --group method sam --versus sam=none --out $(FMTL_SWEEP)/report

# MMoE's synthetic benchmark (Ma et al. 2018, Section 4): shared-bottom and MMoE at task correlations
# 0.5, 0.9, 1.0 × SEEDS, then the table and figure of test MSE against the correlation
reproduce-synthetic: $(BIN)/.installed
	-OMP_NUM_THREADS=1 $(BIN)/mtl-train -m hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) experiment=synthetic_mmoe \
	  trainer.enable_progress_bar=false "~callbacks.rich_progress_bar" "seed=$(SEEDS)" model=shared_bottom,mmoe \
	  data.correlation=0.5,0.9,1.0 hydra.sweep.dir=$(SYNTHETIC_SWEEP) $(ARGS)
	$(BIN)/python scripts/synthetic_correlation.py $(SYNTHETIC_SWEEP)

# UCI Adult from ../shared/data/adult: shared-bottom, MMoE, CGC, PLE × EW, MGDA, PCGrad × SEEDS, then
# the report (AUROC and accuracy per task)
reproduce-adult: $(BIN)/.installed
	-OMP_NUM_THREADS=1 $(BIN)/mtl-train -m hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) experiment=adult_mmoe \
	  data.root=../shared/data/adult trainer.enable_progress_bar=false "~callbacks.rich_progress_bar" "seed=$(SEEDS)" \
	  model=shared_bottom,mmoe,cgc,ple method=ew,mgda,pcgrad hydra.sweep.dir=$(ADULT_SWEEP) $(ARGS)
	$(BIN)/mtl-report $(ADULT_SWEEP) --group model method --out $(ADULT_SWEEP)/report

clean:
	rm -rf $(VENV) outputs .pytest_cache

# gradbench — `make help` lists the targets. Two commands do everything on a fresh machine:
#   make run    set up .venv, then the default training run
#   make test   set up .venv, then the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help setup run test test-slow test-all mutations clean reports bench threads test-functions fwd-vs-bwd paper-mnist fg-family backprop-free variance five-models toy-backprop gd-vs-nag cifar-search depth bench-depth

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install gradbench editable with its dev extra (only when needed)

# Re-installs only when pyproject.toml changes. torch is not pinned: pip takes the registry's
# newest torch + torchvision pair (a CUDA build, which also runs on CPU).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup ## the default training run: penguins, MLP, forward gradient, SGD (prints the run dir)
	$(BIN)/gradbench train

test: setup ## the test suite (slow tests excluded; `make test-all` runs them too)
	$(BIN)/python -m pytest -m "not slow"

test-slow: setup ## only the slow tests (report make targets on penguins, the installed wheel, real MNIST if present; a few minutes)
	$(BIN)/python -m pytest -m slow

test-all: setup ## every test, slow ones included
	$(BIN)/python -m pytest

mutations: setup ## plant each known bug in a temporary copy of the tree and expect a test to fail (tests/mutate.py; a few minutes)
	$(BIN)/python tests/mutate.py

clean: ## remove outputs/ (runs and reports); keeps .venv
	rm -rf outputs/runs outputs/multirun outputs/reports

# ---- one target per report table: sweep into outputs/reports/<name>/, then `gradbench report` ----
# Re-running a target skips the jobs already finished (skip_done=true); `make clean` starts afresh.
# Pass extra overrides to every sweep with ARGS, e.g. `make gd-vs-nag ARGS="device=cuda"`,
# or run sweeps in parallel with ARGS="hydra/launcher=parallel" (threads: auto, README "Threads").
GRADBENCH := $(BIN)/gradbench
REPORTS   := outputs/reports
SWEEP      = $(GRADBENCH) train -m skip_done=true $(ARGS)
# `gradbench data` fails at once, with the dataset's own message, when files are missing.
NEED_DATA  = $(GRADBENCH) data hydra.run.dir=$(REPORTS)/$(1)/data $(2)
# The development machines keep real MNIST in ../shared/data; elsewhere the data root is
# $$GRADBENCH_DATA or gradbench's default (~/.cache/gradbench), where torchvision downloads it.
# Only the targets that train or time on real data look there; `make test` never does.
bench bench-depth threads reports fwd-vs-bwd paper-mnist fg-family backprop-free five-models cifar-search depth: \
  export GRADBENCH_DATA ?= $(if $(wildcard ../shared/data/MNIST/raw),$(abspath ../shared/data))

# The README's images live in outputs/figures/ (kept in git); the targets regenerate them.
BENCH   := $(REPORTS)/bench
FIGURES := outputs/figures
FIGSTYLE := --style paper --width page  # the README's figures: the paper style, a page wide (gradbench/present/figstyle.py)
bench: setup ## speed and peak memory per step of every estimator (paper MLP/CNN, report 000, K tangents, the forward-gradient family, scaling) → outputs/reports/bench/
	$(GRADBENCH) bench +benchmark=penguins_mlp hydra.run.dir=$(BENCH)/penguins_mlp $(ARGS)
	@if $(call NEED_DATA,bench,dataset=mnist) >/dev/null 2>&1; then \
	  for b in paper_mlp paper_cnn r000_cnn tangents fg_family backprop_free scaling_batch; do \
	    $(GRADBENCH) bench +benchmark=$$b hydra.run.dir=$(BENCH)/$$b $(ARGS) || exit 1; done; \
	  for b in scaling_width scaling_depth; do \
	    $(GRADBENCH) bench -m +benchmark=$$b hydra.sweep.dir=$(BENCH)/$$b $(ARGS) || exit 1; done; \
	  $(GRADBENCH) bench-report $(BENCH)/scaling_batch --x batch_size $(FIGSTYLE) >/dev/null && \
	  $(GRADBENCH) bench-report $(BENCH)/scaling_width --x num_params $(FIGSTYLE) >/dev/null && \
	  $(GRADBENCH) bench-report $(BENCH)/scaling_depth --x layers $(FIGSTYLE) >/dev/null && \
	  mkdir -p $(FIGURES) && cp $(BENCH)/scaling_batch/scaling_batch_size.png $(FIGURES)/bench_batch.png && \
	  cp $(BENCH)/scaling_depth/scaling_layers.png $(FIGURES)/bench_depth.png; \
	else echo "MNIST not in the data root: only the penguins benchmark ran (\`gradbench data dataset=mnist\` says why)"; fi
	$(GRADBENCH) bench-report $(BENCH)

# README's bench_depth.png alone: peak memory and step time against depth for every family
# (conf/benchmark/scaling_depth.yaml), the sweep then the figure; `make bench` runs it too.
bench-depth: setup ## the memory-against-depth figure alone (every family; MLP width 1024, 2-16 hidden layers) → outputs/figures/bench_depth.png
	$(call NEED_DATA,bench,dataset=mnist)
	$(GRADBENCH) bench -m +benchmark=scaling_depth hydra.sweep.dir=$(BENCH)/scaling_depth $(ARGS)
	$(GRADBENCH) bench-report $(BENCH)/scaling_depth --x layers $(FIGSTYLE) >/dev/null
	mkdir -p $(FIGURES) && cp $(BENCH)/scaling_depth/scaling_layers.png $(FIGURES)/bench_depth.png

# README "Threads": each workload at 1 thread and at torch's default (all cores), idle and beside
# one CPU-bound process; `bench-report --threads` tabulates them with what `threads=auto` picks.
THREADS := $(REPORTS)/threads
threads: setup ## step time at 1 thread vs all cores, idle vs loaded, per README workload (~20 min) → outputs/reports/threads/
	$(call NEED_DATA,threads,dataset=mnist)
	for load in 0 1; do for b in penguins_logreg penguins_mlp paper_mlp mnist_cnn paper_cnn; do \
	  $(GRADBENCH) bench +benchmark=$$b threads=null 'bench.threads=[1,null]' bench.load=$$load \
	    hydra.run.dir=$(THREADS)/$$b/load$$load $(ARGS) || exit 1; done; done
	$(GRADBENCH) bench-report $(THREADS) --threads

TF := $(REPORTS)/test_functions
test-functions: setup ## report 000 / the paper: Beale and Rosenbrock paths, the sphere's slowdown with dimension (~3 min)
	$(SWEEP) +experiment=test_functions hydra.sweep.dir=$(TF)/paths
	$(GRADBENCH) report $(TF)/paths --target-loss 1e-6 --no-plots
	$(SWEEP) +experiment=sphere_dims hydra.sweep.dir=$(TF)/sphere
	$(GRADBENCH) functions $(TF) $(FIGSTYLE)
	mkdir -p $(FIGURES) && cp $(TF)/functions_beale.png $(TF)/functions_rosenbrock.png $(TF)/sphere_dims.png $(FIGURES)/

reports: fwd-vs-bwd toy-backprop gd-vs-nag test-functions five-models paper-mnist fg-family depth cifar-search ## every report table

fwd-vs-bwd: setup ## report 000: forward vs backward (penguins; MNIST CNN where present), shared and fair lr
	$(SWEEP) +experiment=fwd_vs_bwd hydra.sweep.dir=$(REPORTS)/fwd_vs_bwd/shared
	$(GRADBENCH) report $(REPORTS)/fwd_vs_bwd/shared --out $(REPORTS)/fwd_vs_bwd/shared
	$(SWEEP) +experiment=fwd_vs_bwd_fair +protocol=r000_logreg hydra.sweep.dir=$(REPORTS)/fwd_vs_bwd/fair_logreg
	$(GRADBENCH) report $(REPORTS)/fwd_vs_bwd/fair_logreg --best-per estimator --select val_loss --target-loss 0.3
	$(SWEEP) +experiment=fwd_vs_bwd_fair +protocol=r000_mlp hydra.sweep.dir=$(REPORTS)/fwd_vs_bwd/fair_mlp
	$(GRADBENCH) report $(REPORTS)/fwd_vs_bwd/fair_mlp --best-per estimator --select val_loss --target-loss 0.2
	@if $(call NEED_DATA,fwd_vs_bwd,dataset=mnist) >/dev/null 2>&1; then \
	  $(SWEEP) +experiment=fwd_vs_bwd +protocol=r000_cnn hydra.sweep.dir=$(REPORTS)/fwd_vs_bwd/cnn && \
	  $(GRADBENCH) report $(REPORTS)/fwd_vs_bwd/cnn && \
	  $(SWEEP) +protocol=r000_cnn_backprop seed=0,1,2 plot=false hydra.sweep.dir=$(REPORTS)/fwd_vs_bwd/cnn_backprop && \
	  $(GRADBENCH) report $(REPORTS)/fwd_vs_bwd/cnn_backprop; \
	else echo "MNIST not in the data root: the CNN part is skipped (\`gradbench data dataset=mnist\` says why)"; fi

paper-mnist: setup ## the forward-gradient paper's MNIST MLP and CNN: backward vs forward, dense and rank-1 (needs MNIST)
	$(call NEED_DATA,paper_mnist,dataset=mnist)
	$(SWEEP) +experiment=paper_mnist hydra.sweep.dir=$(REPORTS)/paper_mnist/mlp
	$(GRADBENCH) report $(REPORTS)/paper_mnist/mlp --target-loss 1.3 $(FIGSTYLE)
	mkdir -p $(FIGURES) && cp $(REPORTS)/paper_mnist/mlp/train_loss.png $(FIGURES)/paper_mnist_mlp.png && \
	  cp $(REPORTS)/paper_mnist/mlp/val_accuracy.png $(FIGURES)/paper_mnist_mlp_accuracy.png
	$(SWEEP) +experiment=paper_mnist_cnn hydra.sweep.dir=$(REPORTS)/paper_mnist/cnn
	$(GRADBENCH) report $(REPORTS)/paper_mnist/cnn
	$(SWEEP) +experiment=paper_mnist_fair hydra.sweep.dir=$(REPORTS)/paper_mnist/fair
	$(GRADBENCH) report $(REPORTS)/paper_mnist/fair --best-per estimator --select val_accuracy --target-accuracy 0.5

# The forward-gradient family (README "The forward-gradient family"): each method's rate chosen on
# seed 0's validation accuracy from its own grid, then that rate on seeds 1-3, which the table and
# figure report. Grids: three rates a factor ~3 apart around the papers' and a first look's, and
# a fourth beyond the edge where the first three's best sat (new rates go last: a sweep job's
# number is its place in the list, and skip_done keeps the finished ones). The projection's
# rates are ~n/K (n = 1.86 M weights, K = 8) times the mean's: its estimate is (K/n)·∇L on average.
# A grid that now chooses another rate moves the earlier seeds to $(FG)/replaced/ (kept, not reported).
FG := $(REPORTS)/fg_family
FG_METHODS := \
  backward!estimator=backward!0.01,0.03,0.1,0.3 \
  forward!estimator=forward!0.0001,0.0003,0.001 \
  forward_rank1!estimator=forward_rank1!0.0003,0.001,0.003,0.0001 \
  forward_activities!estimator=forward_activities!0.001,0.003,0.01,0.0003 \
  mean_k8!estimator=forward_rank1,estimator.num_tangents=8!0.001,0.003,0.01,0.0003 \
  project_k8!estimator=forward_project,estimator.structure=rank1!30,100,300 \
  l_bp!estimator=backward,model.local_losses=true!0.03,0.1,0.3 \
  lg_fg_a!estimator=forward_activities,model.local_losses=true!0.003,0.01,0.03,0.1
fg-family: setup ## the forward-gradient family on MNIST: FG-W, FG-A, K=8 mean/projection, local losses (needs MNIST; ~20 min on 2 cores)
	$(call NEED_DATA,fg_family,dataset=mnist)
	for m in $(FG_METHODS); do name=$${m%%!*}; rest=$${m#*!}; keys=$${rest%%!*}; lrs=$${rest#*!}; \
	  $(SWEEP) +experiment=fg_family $$(echo $$keys | tr ',' ' ') optimizer.lr=$$lrs \
	    hydra.sweep.dir=$(FG)/grid/$$name || exit 1; \
	  $(GRADBENCH) report $(FG)/grid/$$name --select val_accuracy --no-plots >/dev/null || exit 1; \
	  if [ -d $(FG)/seeds/$$name ] && ! cmp -s $(FG)/grid/$$name/best.overrides $(FG)/seeds/$$name/chosen; then \
	    mkdir -p $(FG)/replaced && mv $(FG)/seeds/$$name $(FG)/replaced/$$name-$$(date +%s) && \
	    echo "$$name: the grid now chooses another rate; the earlier seeds are in $(FG)/replaced/"; fi; \
	  mkdir -p $(FG)/seeds/$$name && cp $(FG)/grid/$$name/best.overrides $(FG)/seeds/$$name/chosen; \
	  xargs -a $(FG)/seeds/$$name/chosen $(SWEEP) seed=1,2,3 \
	    hydra.sweep.dir=$(FG)/seeds/$$name || exit 1; done
	$(GRADBENCH) report $(FG)/seeds --out $(FG)/t05 --select val_accuracy --target-accuracy 0.5 --no-plots >/dev/null
	$(GRADBENCH) report $(FG)/seeds --out $(FG) --select val_accuracy --target-accuracy 0.9 $(FIGSTYLE)
	mkdir -p $(FIGURES) && cp $(FG)/val_accuracy.png $(FIGURES)/fg_family.png

# The backprop-free table (README "The backprop-free table"), fg-family's successor: `gradbench
# search` gives every method of +experiment=backprop_free the same search on seed 0 (2000 steps:
# SGD, SGD + momentum 0.9, Adam × 3 rates around the method's centre, × head layouts for local
# losses; a best rate on its grid's edge gets one more rate beyond it, once), then trains the best 4
# by validation accuracy (backprop always among them) for 10 epochs (8600 steps) with warm-up +
# cosine on seeds 1-3. Every sweep skips its finished jobs, so an interrupted run resumes where it
# stopped. Methods whose estimator config does not exist yet are skipped with one line each.
# Then the long stage's tables at validation accuracy 0.97 and 0.9, paired against backprop, and
# the step cost (time, peak memory, passes per step) of the methods at batch 64 (bench/).
BPF := $(REPORTS)/backprop_free
BPF_BASELINE := --baseline estimator=backward model.local_losses=false
backprop-free: setup ## every method at its best optimizer and rate, the best 4 for 10 epochs, paired against backprop (needs MNIST; ~2 h on 2 cores, resumable)
	$(call NEED_DATA,backprop_free,dataset=mnist)
	$(GRADBENCH) search backprop_free --out $(BPF) $(ARGS)
	$(GRADBENCH) report $(BPF)/long --out $(BPF)/t097 --select val_accuracy --target-accuracy 0.97 $(BPF_BASELINE) --no-plots >/dev/null
	$(GRADBENCH) report $(BPF)/long --out $(BPF) --select val_accuracy --target-accuracy 0.9 $(BPF_BASELINE) $(FIGSTYLE)
	mkdir -p $(FIGURES) && cp $(BPF)/val_accuracy.png $(FIGURES)/backprop_free.png
	$(GRADBENCH) bench +benchmark=backprop_free hydra.run.dir=$(BPF)/bench $(ARGS)

variance: setup ## each estimator's error against its theory as the MLP grows (penguins, float64; ~1 min) → README figure
	$(GRADBENCH) variance device=cpu variance.look.style=paper variance.look.width=page hydra.run.dir=$(REPORTS)/variance $(ARGS)
	mkdir -p $(FIGURES) && cp $(REPORTS)/variance/variance.png $(FIGURES)/variance.png

five-models: setup ## report 001: CIFAR-10 car/cat, five SGD settings x {sgd, manual_sgd} (needs CIFAR-10)
	$(call NEED_DATA,five_models,+protocol=r001_carcat)
	$(SWEEP) +experiment=five_models hydra.sweep.dir=$(REPORTS)/five_models/runs
	$(GRADBENCH) report $(REPORTS)/five_models/runs --out $(REPORTS)/five_models --select val_accuracy

toy-backprop: setup ## report 002: the toy network trained with hand-derived backprop and the others
	$(SWEEP) +experiment=toy_backprop hydra.sweep.dir=$(REPORTS)/toy_backprop/runs
	$(GRADBENCH) report $(REPORTS)/toy_backprop/runs --out $(REPORTS)/toy_backprop --select train_loss

gd-vs-nag: setup ## report 003 on penguins: gradient descent vs Nesterov (FISTA schedule)
	$(SWEEP) +experiment=gd_vs_nag hydra.sweep.dir=$(REPORTS)/gd_vs_nag/runs
	$(GRADBENCH) report $(REPORTS)/gd_vs_nag/runs --out $(REPORTS)/gd_vs_nag --select val_accuracy

cifar-search: setup ## report 004: random search (Optuna random sampler) on CIFAR-10 with PCA (needs CIFAR-10)
	$(call NEED_DATA,cifar_search,+protocol=r004_cifar)
	$(SWEEP) +experiment=cifar_search hydra.sweep.dir=$(REPORTS)/cifar_search/runs
	$(GRADBENCH) report $(REPORTS)/cifar_search/runs --out $(REPORTS)/cifar_search --select val_accuracy

depth: setup ## report 004: 2-5 layer MLPs on CIFAR-10 with PCA, two penalties (needs CIFAR-10)
	$(call NEED_DATA,depth,+protocol=r004_cifar)
	$(SWEEP) +experiment=depth hydra.sweep.dir=$(REPORTS)/depth/runs
	$(GRADBENCH) report $(REPORTS)/depth/runs --out $(REPORTS)/depth --select val_accuracy

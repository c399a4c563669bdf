#!/usr/bin/env bash
# DC3's quality on real multi-annotator data at a budget a 2-core CPU affords (BENCHMARKS.md).
# Needs CIFAR-10N imported first:  ./generate_datasets.sh --cifar10n ../shared/data/CIFAR10N
# Runs Mean Teacher vanilla vs +DC3 for seeds 1-3 first, then the Table 4 ablation variants, then
# DC3 with --ambiguity_rank uncertainty (ours), and writes the tables to
# experiments/cifar10n/tables/. Resumable: rerun to continue.
#   METHODS=mean_teacher,fixmatch TRAIN_KIMG=64 bench/cifar10n_quality.sh
# The other methods' Table 2 rows (vanilla and +DC3 only), as run for BENCHMARKS.md:
#   METHODS=fully_supervised,pseudo_label,pi_model VARIANT_GROUPS=baseline,dc3 bench/cifar10n_quality.sh
#   METHODS=fixmatch VARIANT_GROUPS=baseline,dc3 EXTRA_FLAGS="--uratio 1" bench/cifar10n_quality.sh
# TRAIN_DIR (default experiments/cifar10n) keeps a series of runs apart; MIXED_PRECISION=0 trains in
# float32 (for CPUs without bf16 instructions, where bf16 is emulated and slow).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
METHODS="${METHODS:-mean_teacher}"
EXTRA="--filters 32 --train_kimg ${TRAIN_KIMG:-24} --report_kimg 8 --save_kimg 8 --bn_momentum 0.99"
EXTRA="$EXTRA --mixed_precision ${MIXED_PRECISION:-1} --use_weighted_xe 1 ${EXTRA_FLAGS:-}"
TRAIN_DIR="${TRAIN_DIR:-experiments/cifar10n}"
# Groups of variants, run for all seeds one group after the other.
VARIANT_GROUPS="${VARIANT_GROUPS:-baseline,dc3 ceinv,cc,dc3_prior dc3_uncertainty}"
for variants in $VARIANT_GROUPS; do
  for seed in 1 2 3; do
    "$PYTHON" scripts/run_ablation.py --dataset_name cifar10n --seeds "$seed" --methods "$METHODS" \
      --variants "$variants" --train_dir "$TRAIN_DIR" --extra "$EXTRA"
  done
done
"$PYTHON" scripts/report.py "$TRAIN_DIR" --split val --out "$TRAIN_DIR/tables"

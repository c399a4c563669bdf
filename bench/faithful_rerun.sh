#!/usr/bin/env bash
# The CIFAR-10N experiments of issue #15 (BENCHMARKS.md section 9), resumable: rerun to continue.
# Needs CIFAR-10N imported first:  ./generate_datasets.sh --cifar10n ../shared/data/CIFAR10N
#
#   bench/faithful_rerun.sh table2   Table 2 with the faithful defaults: the five methods, vanilla,
#                                    the paper's DC3 and (Mean Teacher) --ambiguity_rank
#                                    uncertainty, seeds 1-3, section 7's budget (24 kimg), DC3 runs
#                                    first -> experiments/cifar10n_faithful
#   bench/faithful_rerun.sh long     Mean Teacher and FixMatch (uratio 7), vanilla / DC3 /
#                                    uncertainty, seed 1, LONG_KIMG (default 256) kimg with a report
#                                    every 16 kimg -> experiments/cifar10n_long
#   bench/faithful_rerun.sh curves   F1, d and p_a's AUROC at every report of both series
#                                    -> bench/out/faithful_{table2,long}/
#
# MIXED_PRECISION (default 1) as in section 7; set 0 on CPUs without bf16 instructions.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export ML_DATA="${ML_DATA:-data}" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
MP="${MIXED_PRECISION:-1}"
BASE="--filters 32 --bn_momentum 0.99 --mixed_precision $MP --use_weighted_xe 1"

ablation() {  # ablation TRAIN_DIR SEEDS METHODS VARIANTS EXTRA
  "$PYTHON" scripts/run_ablation.py --dataset_name cifar10n --seeds "$2" --methods "$3" \
    --variants "$4" --train_dir "$1" --extra "$5"
}

case "${1:-}" in
  table2)
    out=experiments/cifar10n_faithful
    extra="$BASE --train_kimg 24 --report_kimg 8 --save_kimg 8"
    for seed in 1 2 3; do
      ablation "$out" "$seed" mean_teacher dc3,dc3_uncertainty "$extra"
      ablation "$out" "$seed" pi_model,pseudo_label,fully_supervised dc3 "$extra"
      ablation "$out" "$seed" fixmatch dc3 "$extra --uratio 1"
    done
    for seed in 1 2 3; do
      ablation "$out" "$seed" mean_teacher,pi_model,pseudo_label,fully_supervised baseline "$extra"
      ablation "$out" "$seed" fixmatch baseline "$extra --uratio 1"
    done
    "$PYTHON" scripts/report.py "$out" --split val --out "$out/tables"
    ;;
  long)
    out=experiments/cifar10n_long
    kimg="${LONG_KIMG:-256}"
    extra="$BASE --train_kimg $kimg --report_kimg 16 --save_kimg 16"
    ablation "$out" 1 mean_teacher dc3,dc3_uncertainty,baseline "$extra"
    ablation "$out" 1 fixmatch dc3,dc3_uncertainty,baseline "$extra"
    "$PYTHON" scripts/report.py "$out" --split val --out "$out/tables"
    ;;
  curves)
    for series in table2:experiments/cifar10n_faithful long:experiments/cifar10n_long; do
      if [ -d "${series#*:}" ]; then
        "$PYTHON" -m bench.ambiguity_curves "${series#*:}" --out "bench/out/faithful_${series%%:*}"
      fi
    done
    ;;
  *)
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The CIFAR-10N experiments of issue #15 (BENCHMARKS.md section 9), resumable: rerun to continue.
# Needs CIFAR-10N imported first:  ./generate_datasets.sh --cifar10n ../shared/data/CIFAR10N
#
#   bench/faithful_rerun.sh table2   Table 2 with the faithful defaults: the five methods, vanilla,
#                                    the paper's DC3 and (Mean Teacher) --ambiguity_rank
#                                    uncertainty, seeds 1-3, section 7's budget (24 kimg): the
#                                    other four methods' DC3 runs, their vanilla runs, then Mean
#                                    Teacher's -> experiments/cifar10n_faithful
#   bench/faithful_rerun.sh long     Mean Teacher and FixMatch (uratio 1, as in table2 and
#                                    section 7), vanilla / DC3 / uncertainty, seed 1, LONG_KIMG
#                                    (default 256) kimg with a report every 16 kimg
#                                    -> experiments/cifar10n_long
#   bench/faithful_rerun.sh curves   F1, d and p_a's AUROC at every report of both series, and
#                                    their plot against kimg (with matplotlib, bench/requirements.txt)
#                                    -> bench/results/faithful_{table2,long}_curves/ (committed)
#   bench/faithful_rerun.sh synthetic  the five methods with the paper's DC3 and with
#                                    --ambiguity_rank uncertainty on the synthetic data (make
#                                    demo's budget, ~2-4 min per run), then p_a's AUROC against
#                                    "is a blend" (truth.csv) -> bench/out/faithful_synthetic/
#                                    (needs ./generate_datasets.sh first)
#   bench/faithful_rerun.sh relabel  issue #16: Mean Teacher vanilla / DC3 / uncertainty, seeds
#                                    1-3 (the table2 runs), then the simulated relabeling with
#                                    their proposals (BENCHMARKS.md section 10)
#                                    -> bench/out/relabel_cifar10n/
#
# MIXED_PRECISION (default 1) as in section 7; set 0 on CPUs without bf16 instructions.
#
# The series take more CPU than one session has and experiments/ is git-ignored, so table2 and
# long keep every finished run's args.json, metrics.jsonl and report rows in the committed
# bench/results/faithful_{table2,long}/ (bench/keep_results.py) and put them back at the start:
# a fresh checkout resumes after the last kept run. curves reads the kept folders. (relabel
# needs the report CSVs, which are not kept: it retrains what a fresh checkout lacks.)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export ML_DATA="${ML_DATA:-data}" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
MP="${MIXED_PRECISION:-1}"
BASE="--filters 32 --bn_momentum 0.99 --mixed_precision $MP --use_weighted_xe 1"

kept_folder() {  # kept_folder TRAIN_DIR
  case "$1" in
    experiments/cifar10n_faithful) echo bench/results/faithful_table2 ;;
    experiments/cifar10n_long) echo bench/results/faithful_long ;;
  esac
}

KEEP=0  # 1: restore kept runs before and keep finished ones after every ablation (table2, long)
DATASET=cifar10n

ablation() {  # ablation TRAIN_DIR SEEDS METHODS VARIANTS EXTRA: one run at a time, each kept
  local kept method variant
  kept=$(kept_folder "$1")
  if [ "$KEEP" = 1 ] && [ -d "$kept" ]; then
    "$PYTHON" -m bench.keep_results restore "$kept" "$1"
  fi
  for method in ${3//,/ }; do
    for variant in ${4//,/ }; do
      "$PYTHON" scripts/run_ablation.py --dataset_name "$DATASET" --seeds "$2" \
        --methods "$method" --variants "$variant" --train_dir "$1" --extra "$5"
      if [ "$KEEP" = 1 ]; then "$PYTHON" -m bench.keep_results keep "$1" "$kept"; fi
    done
  done
}

TABLE2_OUT=experiments/cifar10n_faithful
TABLE2_EXTRA="$BASE --train_kimg 24 --report_kimg 8 --save_kimg 8"

mean_teacher_series() {  # the three Mean Teacher runs of every seed: Table 2's and #16's
  for seed in 1 2 3; do
    ablation "$TABLE2_OUT" "$seed" mean_teacher dc3,dc3_uncertainty,baseline "$TABLE2_EXTRA"
  done
}

curves() {  # curves SERIES: its kept runs' curves -> bench/results/faithful_SERIES_curves
  "$PYTHON" -m bench.ambiguity_curves "bench/results/faithful_$1" \
    --out "bench/results/faithful_$1_curves"
}

case "${1:-}" in
  table2)
    KEEP=1
    out=$TABLE2_OUT
    extra=$TABLE2_EXTRA
    for seed in 1 2 3; do
      ablation "$out" "$seed" pi_model,pseudo_label,fully_supervised dc3 "$extra"
      ablation "$out" "$seed" fixmatch dc3 "$extra --uratio 1"
    done
    for seed in 1 2 3; do
      ablation "$out" "$seed" pi_model,pseudo_label,fully_supervised baseline "$extra"
      ablation "$out" "$seed" fixmatch baseline "$extra --uratio 1"
    done
    mean_teacher_series  # last: section 9 already has its numbers from an earlier checkout
    "$PYTHON" scripts/report.py "$out" --split val --out "$out/tables"
    ;;
  long)
    KEEP=1
    out=experiments/cifar10n_long
    kimg="${LONG_KIMG:-256}"
    extra="$BASE --train_kimg $kimg --report_kimg 16 --save_kimg 16"
    # DC3 against vanilla for both methods first, our uncertainty variant after them
    ablation "$out" 1 mean_teacher dc3,baseline "$extra"
    ablation "$out" 1 fixmatch dc3,baseline "$extra --uratio 1"
    ablation "$out" 1 mean_teacher dc3_uncertainty "$extra"
    ablation "$out" 1 fixmatch dc3_uncertainty "$extra --uratio 1"
    "$PYTHON" scripts/report.py "$out" --split val --out "$out/tables"
    curves long
    ;;
  relabel)
    mean_teacher_series
    # One --source per variant, each with its seeds' run folders (told apart by args.json).
    sources=$("$PYTHON" - "$TABLE2_OUT" <<'PY'
import glob, json, os, sys
runs = {'vanilla': [], 'dc3': [], 'dc3_uncertainty': []}
for args_path in sorted(glob.glob(os.path.join(sys.argv[1], '*', 'MeanTeacher_*', 'args.json'))):
    a = json.load(open(args_path))
    if not os.path.isdir(os.path.join(os.path.dirname(args_path), 'reports')):
        continue
    kind = ('vanilla' if not (a.get('combined_output') or a.get('wou') or a.get('wol')) else
            'dc3_uncertainty' if a.get('ambiguity_rank') == 'uncertainty' else 'dc3')
    runs[kind].append(os.path.dirname(args_path))
print(' '.join(f'--source {k}={",".join(v)}' for k, v in runs.items() if v))
PY
)
    # shellcheck disable=SC2086  # one word per flag
    "$PYTHON" scripts/simulate_relabeling.py $sources --out bench/out/relabel_cifar10n \
      --acceptance_offset 0,0.2608,0.6481
    ;;
  synthetic)
    DATASET=synthetic
    out=experiments/synthetic_faithful
    # make demo's budget and flags (Makefile DEMO_FLAGS, fp32); FixMatch at uratio 1 as in table2
    extra="--filters 16 --repeat 2 --batch 32 --train_kimg 12 --report_kimg 4 --save_kimg 4"
    extra="$extra --bn_momentum 0.99 --lr 0.03"
    for variant in dc3 dc3_uncertainty; do
      ablation "$out" 1 fully_supervised,pi_model,mean_teacher,pseudo_label "$variant" "$extra"
      ablation "$out" 1 fixmatch "$variant" "$extra --uratio 1"
    done
    "$PYTHON" -m bench.ambiguity_curves "$out" --out bench/out/faithful_synthetic \
      --truth "$ML_DATA/raw/Synthetic/truth.csv"
    ;;
  curves)
    for series in table2 long; do
      if [ -d "bench/results/faithful_$series" ]; then curves "$series"; fi
    done
    ;;
  *)
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Does p_a find the ambiguous images? (BENCHMARKS.md section 8.) On the synthetic data, whose
# truth.csv says which images blend two classes, trains the demo's Mean Teacher + DC3 run with
# L_A ranking by p_a (the paper), by p_a with gradients through the scaling weights, and by the
# classifier's uncertainty (ours), then prints each run's AUROC of p_a against "is a blend" and
# the paper's table. Needs the synthetic data first: ./generate_datasets.sh
#   bench/ambiguity_rank.sh            (about 1 min per run on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export ML_DATA="${ML_DATA:-data}" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
OUT="${OUT:-experiments/ambiguity_rank}"
FLAGS="--filters 16 --repeat 2 --batch 32 --train_kimg 12 --report_kimg 4 --save_kimg 4"
FLAGS="$FLAGS --bn_momentum 0.99 --lr 0.03 --seed ${SEED:-0}"
for variant in "--ambiguity_rank p_a" "--ambiguity_rank p_a --prob_gradient 1" \
               "--ambiguity_rank uncertainty"; do
  # shellcheck disable=SC2086
  run_dir=$("$PYTHON" mean_teacher.py --dataset synthetic.1@-1-10 --train_dir "$OUT" $FLAGS \
            $variant 2>/dev/null | tail -1)
  echo "== $variant  ($run_dir)"
  "$PYTHON" -m bench.ambiguity_check --run_dir "$run_dir" --truth "$ML_DATA/raw/Synthetic/truth.csv"
done
"$PYTHON" scripts/report.py "$OUT" --split val --out "$OUT/tables"

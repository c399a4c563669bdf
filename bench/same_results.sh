#!/usr/bin/env bash
# Does a refactoring change results? Trains three short runs with --deterministic 1 (Mean Teacher
# with and without DC3, FixMatch with DC3; 8 filters, 1 kimg) once with the code of GIT_REF and
# once with the working tree, then compares every report's metrics (metrics.jsonl) and prediction
# CSVs byte for byte. Vanilla runs are matched by method, since their folder names may differ.
# Needs the synthetic dataset (./generate_datasets.sh); takes a few minutes on a CPU.
#
#   bench/same_results.sh GIT_REF
set -euo pipefail
cd "$(dirname "$0")/.."
ref="${1:?usage: bench/same_results.sh GIT_REF}"
PYTHON="${PYTHON:-python3}"
root=$(pwd)
work=$(mktemp -d)
git worktree add -q --detach "$work/before" "$ref"
trap 'git worktree remove --force "$work/before"; rm -rf "$work"' EXIT
export ML_DATA="$root/${ML_DATA:-data}" TF_CPP_MIN_LOG_LEVEL=2

train() {  # train CODE_DIR OUT
  local flags="--dataset synthetic.1@-1-10 --train_dir $2 --filters 8 --repeat 1 --batch 16
    --train_kimg 1 --report_kimg 0.5 --save_kimg 0.5 --bn_momentum 0.99 --deterministic 1"
  (cd "$1"
   # shellcheck disable=SC2086  # one word per flag
   "$PYTHON" mean_teacher.py $flags > /dev/null 2>&1
   "$PYTHON" mean_teacher.py $flags --combined_output 0 --wou 0 --wol 0 > /dev/null 2>&1
   "$PYTHON" fixmatch.py $flags --uratio 2 > /dev/null 2>&1)
}
train "$work/before" "$work/runs_before"
train "$root" "$work/runs_after"

"$PYTHON" - "$work/runs_before" "$work/runs_after" <<'PY'
import filecmp, glob, json, os, sys

def runs(top):
    found = {}
    for args_path in glob.glob(os.path.join(top, '*', '*', 'args.json')):
        args = json.load(open(args_path))
        dc3 = bool(args.get('combined_output') or args.get('wou') or args.get('wol'))
        found[(args['method'], dc3)] = os.path.dirname(args_path)
    return found

before, after = runs(sys.argv[1]), runs(sys.argv[2])
same_everywhere = True
for key in sorted(before):
    a, b = before[key], after.get(key)
    if b is None:
        print(f'{key}: missing after'); same_everywhere = False; continue
    lines = lambda d: [json.loads(l) for l in open(os.path.join(d, 'metrics.jsonl'))]
    same_metrics = lines(a) == lines(b)
    csvs = sorted(os.path.relpath(p, a) for p in glob.glob(os.path.join(a, 'reports', '*', '*.csv')))
    same_csvs = all(filecmp.cmp(os.path.join(a, c), os.path.join(b, c), shallow=False) for c in csvs)
    same_everywhere &= same_metrics and same_csvs
    print(f'{key[0]:12s} {"DC3" if key[1] else "vanilla":8s} reports {len(lines(a))}: metrics '
          f'{"identical" if same_metrics else "DIFFER"}, {len(csvs)} CSVs '
          f'{"identical" if same_csvs else "DIFFER"}')
sys.exit(0 if same_everywhere else 1)
PY

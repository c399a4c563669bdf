#!/usr/bin/env bash
# Issue #21: where our supervised training lost ~3 points to USB's (BENCHMARKS.md section 14,
# part 7). Runs in a scratch worktree of the code before the fix (4f5a67b) with
# bench/usb_gap.patch applied: environment switches for USB's differences, never product code.
#
#   bench/usb_gap.sh train VARIANTS SEED [METHOD]
#       our METHOD run (fully_supervised by default; section 14's parity settings, 24 kimg, the
#       vanilla method) on data/cifar10n.SEED,
#       then the live and EMA weights' validation accuracy with re-estimated batch-norm
#       statistics (bench.usb_quality.ours_reestimated). VARIANTS: base, or a comma list of
#         layout  USB wrn_28_2's transition blocks: their first convolution reads the raw
#                 residual stream, not the normalised one
#         eps     batch-norm epsilon 1e-5 in the blocks (torch's default), 1e-3 in the last
#         norm    inputs normalised with USB's CIFAR-10 mean and std instead of to [-1, 1]
#         sgd     torch's Nesterov update (lr applied at the current step) instead of Keras'
#         pad     stride-2 convolutions padded by 1 pixel on every side (torch) instead of 'same'
#         epochs  every image once per epoch (what commit 4a0d198 made the product do)
#         passes  one network call per subset (labeled, each unlabeled view), as the original
#                 Mean Teacher, Pi-model, Pseudo-Label and ce.py do and USB's Pseudo-Label does
#                 (README, Differences, row 22), instead of one call over their concatenation
#   bench/usb_gap.sh step [STEPS]
#       USB's wrn_28_2 with its optimiser and schedule (torch, the USB venv) against our network
#       with layout,eps,pad, our loss, weight decay and Keras' SGD, from the same initial weights
#       on the same random batches (bench/usb_gap_step.py): losses per step and how far apart
#       the updated kernels are.
# Needs data/cifar10n.* (generate_datasets.sh --cifar10n) and, for step, bench/out/venv-usb.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TREE=bench/out/usb_gap_tree
usage="usage: bench/usb_gap.sh train VARIANTS SEED [METHOD] | step [STEPS]"
if [ "${1:-}" = train ]; then  # check the arguments before anything is created
  [ $# -ge 3 ] || { echo "error: train needs VARIANTS and SEED; $usage" >&2; exit 2; }
  for v in ${2//,/ }; do
    case "$v" in base|layout|eps|norm|sgd|pad|epochs|passes) ;;
      *) echo "error: unknown variant '$v'; use base or layout,eps,norm,sgd,pad,epochs,passes" >&2
         exit 2 ;;
    esac
  done
fi
if [ ! -d "$TREE" ]; then
  git worktree add -f --detach "$TREE" 4f5a67b
  rm -rf "$TREE/bench/out"
  ln -s "$ROOT/data" "$TREE/data"
  ln -s "$ROOT/experiments" "$TREE/experiments"
  ln -s "$ROOT/bench/out" "$TREE/bench/out"
fi
stamp=$(git hash-object bench/usb_gap.patch)
if [ "$(cat "$TREE/.usb_gap_patch" 2>/dev/null)" != "$stamp" ]; then  # (re)apply a changed patch
  git -C "$TREE" checkout -q -- libml
  git -C "$TREE" apply "$ROOT/bench/usb_gap.patch"
  echo "$stamp" > "$TREE/.usb_gap_patch"
fi
export PYTHONPATH="$ROOT/$TREE" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
case "${1:-}" in
  train)
    variants=$2 seed=$3 method=${4:-fully_supervised}
    dir=experiments/usb_gap_${method}_${variants//,/_}
    cd "$TREE"
    PROBE=$variants python3 scripts/run_ablation.py --dataset_name cifar10n --seeds "$seed" \
      --methods "$method" --variants baseline --train_dir "$dir" --extra \
      "--filters 32 --mixed_precision 0 --use_weighted_xe 0 --uratio 1 --bn_momentum 0.99 --train_kimg 24 --report_kimg 8 --save_kimg 8"
    run=$(ls -d "$dir/cifar10n.$seed@-1-10"/*_*/ | head -n 1)  # the one run of $dir
    PROBE=$variants python3 -c "from bench.usb_quality import ours_reestimated as r; print('$variants seed $seed', r('$run', 'data'))"
    ;;
  step)
    steps=${2:-5}
    bench/out/venv-usb/bin/python bench/usb_gap_step.py --side torch --steps "$steps"
    PROBE=layout,eps,pad python3 bench/usb_gap_step.py --side ours
    ;;
  *) echo "error: $usage" >&2; exit 2 ;;
esac

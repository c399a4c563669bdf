#!/usr/bin/env bash
# Generates the TFRecord datasets the training scripts read (<data>/<name>.<seed>/, see
# libml/records.py). Run from anywhere; output goes to $ML_DATA, or ./data of the current folder.
#
#   ./generate_datasets.sh                    synthetic default: writes data/raw/Synthetic with
#                                             scripts/make_synthetic.py, imports it as `synthetic`
#   ./generate_datasets.sh --dcic ROOT        imports every DCIC dataset folder under ROOT (one
#                                             with annotations.json): Plankton and Turkey at 96 px,
#                                             MiceBone at 192 px, CIFAR10H at 32 px, any other
#                                             folder at 32 px or $IMAGE_SIZE
#   ./generate_datasets.sh --cifar10n PATH    imports the CIFAR10N folder at PATH as `cifar10n`
#                                             at 32 px, with the ten CIFAR-10 classes pinned
#                                             (--classes), so a mistyped label is an error
#
# Environment: SEEDS (default 1,2,3), IMAGE_SIZE (size for DCIC folders not listed above),
# PYTHON (default: python on PATH), ML_DATA (output root). Extra importer flags such as
# --keep_test 1 or --slice 2 go in IMPORT_FLAGS, e.g. IMPORT_FLAGS="--keep_test 1".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
SEEDS="${SEEDS:-1,2,3}"
read -r -a EXTRA <<< "${IMPORT_FLAGS:-}"

usage() {
  # The header comment above is the help text.
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
}

import_folder() {  # import_folder FOLDER NAME SIZE [IMPORTER FLAG...]
  echo "== importing $1 as $2 at $3 px, seeds $SEEDS"
  "$PYTHON" "$HERE/scripts/create_datasets.py" --input "$1" --name "$2" --image_size "$3" \
    --seeds "$SEEDS" "${@:4}" ${EXTRA[@]+"${EXTRA[@]}"}
}

# CIFAR-10's class names in its own index order (also their sorted order).
CIFAR10_CLASSES=airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck

dcic_size() {  # the paper's image size for the DCIC datasets it uses
  case "$1" in
    Plankton|Turkey) echo 96 ;;
    MiceBone) echo 192 ;;
    CIFAR10H) echo 32 ;;
    *) echo "${IMAGE_SIZE:-32}" ;;
  esac
}

case "${1:-}" in
  "")
    "$PYTHON" "$HERE/scripts/make_synthetic.py" --out data/raw --name Synthetic
    import_folder data/raw/Synthetic synthetic 32
    ;;
  --dcic)
    root="${2:?--dcic needs the folder that holds the DCIC dataset folders}"
    found=0
    for folder in "$root"/*/; do
      folder="${folder%/}"
      [[ -f "$folder/annotations.json" ]] || continue
      base="$(basename "$folder")"
      name="$(echo "$base" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9_\n-' '_')"
      import_folder "$folder" "$name" "$(dcic_size "$base")"
      found=$((found + 1))
    done
    if [[ "$found" -eq 0 ]]; then
      echo "error: no folder with annotations.json under $root; pass the DCIC root folder" >&2
      exit 2
    fi
    ;;
  --cifar10n)
    import_folder "${2:?--cifar10n needs the CIFAR10N folder}" cifar10n 32 \
      --classes "$CIFAR10_CLASSES"
    ;;
  -h|--help)
    usage
    ;;
  *)
    echo "error: unknown option $1; see ./generate_datasets.sh --help" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# DefectFill fine-tuned on the embedded fabric base vs on the tiny RANDOM base, same reference data,
# same settings (configs/defectfill/fabric_base.yaml), same clean images and seeds; generation
# summaries (visible-change statistic, rejections) and contact sheets go to
# bench/results/defectfill_fabric_base/. About 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/defectfill_fabric_base_bench}
RES=bench/results/defectfill_fabric_base
DATA=${DATA:-../shared/data/aitex}
mkdir -p "$OUT" "$RES"
[ -f "$OUT/tiny/model_index.json" ] || defectfill make-tiny-model "$OUT/tiny"
for base in ${BASES:-fabric-base tiny}; do
  model=$base; [ "$base" = tiny ] && model="$OUT/tiny"
  defectfill train --config configs/defectfill/fabric_base.yaml --overwrite --set "model=$model" \
    --set "data_dir=$DATA" --set "output_dir=$OUT/train-$base"
  defectfill generate --lora "$OUT/train-$base/lora" --clean "$DATA/good" --num-samples 16 --candidates 4 \
    --steps 25 --seed 0 --output-dir "$OUT/gen-$base"
  cp "$OUT/gen-$base/contact_sheet.png" "$RES/contact_sheet_$base.png"
  cp "$OUT/gen-$base/summary.json" "$RES/generation_summary_$base.json"
done

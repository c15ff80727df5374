#!/usr/bin/env bash
# The main job on the embedded default data: generate the synthetic behaviour
# log (deterministic, seed 0), then run the whole TFX pipeline locally
# (LocalDagRunner, SQLite ML Metadata, Beam DirectRunner in memory: on the
# demo's 60k examples faster than 2 processes, README; early stopping with
# patience 1):
# ingestion -> statistics/schema/anomalies -> Transform -> Trainer (ETA) ->
# Evaluator vs the last blessed model -> offline infra validation -> Pusher.
# Called by `make demo`, which sets TF_USE_LEGACY_KERAS=1 and PYTHONPATH.
# A second run reuses ML Metadata's cache for every unchanged component.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo_output}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=.venv/bin/python
TRAIN_STEPS=${TRAIN_STEPS:-1000}
LOG="$OUT/pipeline.log"

if [ ! -f "$OUT/data/oracle.json" ]; then
  echo "demo: generating the synthetic log into $OUT/data"
  "$PY" -m preprocessing.synthetic --output_dir="$OUT/data" --seed=0
fi
echo "demo: running the pipeline (full log: $LOG); components as they finish:"
set +e
"$PY" -m pipeline.local_runner \
  --data_root="$OUT/data" \
  --pipeline_root="$OUT/pipeline_root" \
  --serving_model_dir="$OUT/serving_model" \
  --train_steps="$TRAIN_STEPS" \
  --hparam=early_stopping_patience=1 \
  --beam_pipeline_args=--direct_running_mode=in_memory \
  --model=eta 2>"$LOG" > "$OUT/report.txt" &
runner=$!
# Show progress from the runner's log while it works.
tail -n +1 -F "$LOG" 2>/dev/null | grep --line-buffered -oE "Component [A-Za-z_]+ is (finished|running)" &
watcher=$!
wait "$runner"
status=$?
kill "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
set -e
cat "$OUT/report.txt"
"$PY" - "$OUT/data/oracle.json" <<'PYEOF'
import json, sys
oracle = json.load(open(sys.argv[1]))
print(f"reference: oracle (true click probability) AUC on the eval day = {oracle['oracle_auc_eval']:.4f}")
PYEOF
if [ "$status" -ne 0 ]; then
  echo "demo: the pipeline exited $status (3 = a gate blocked the push); see $LOG" >&2
fi
exit "$status"

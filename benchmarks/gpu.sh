#!/usr/bin/env bash
# One prepared run for a machine with a CUDA GPU (budget: at most 8 minutes).
#
#   bash benchmarks/gpu.sh [OUT_DIR]        (default: $OUT if set, else ./gpu-results)
#
# 1. the CUDA path of the test suite's small end-to-end run, plus the device-agnostic tests
#    of the pipeline, precision and torch kNN (which add their cuda cases on a GPU);
# 2. images/s of ResNet-50 and BN-Inception at 224 px, batch 64, fp32 vs bf16 (channels_last),
#    harness (bench.train.train, JPEG decode on input threads, augmentation on the device) vs
#    the bare loop (torchvision transforms + DataLoader(num_workers, pin_memory) + PML), on a
#    generated JPEG tree;
# 3. exact kNN at SOP scale (60,502 x 512, 11,316 classes): torch on the GPU vs faiss-cpu,
#    same P@1 / R-Precision / MAP@R.
# Every step writes its log under OUT_DIR; a failing step is recorded and the next one runs;
# the exit status is non-zero if any step failed.
set -euo pipefail

OUT_DIR="${1:-${OUT:-gpu-results}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export BENCH_CACHE="${BENCH_CACHE:-$OUT_DIR/cache}"
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
failed=0

step() {  # step NAME TIMEOUT_S COMMAND...: run with a time limit, log, record the status
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS status=0
  echo "== $name: $*" | tee -a "$SUMMARY"
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1 || status=$?
  echo "   status $status, $((SECONDS - start)) s" | tee -a "$SUMMARY"
  tail -n 25 "$OUT_DIR/$name.log" >> "$SUMMARY"
  if [ "$status" -ne 0 ]; then failed=1; fi
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python -c "import torch, faiss; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'faiss', faiss.__version__)"
  nproc; free -g | head -2
} > "$OUT_DIR/machine.txt" 2>&1 || true
cat "$OUT_DIR/machine.txt" >> "$SUMMARY"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "no CUDA device visible: nothing to measure" | tee -a "$SUMMARY"; exit 1; }

# 1. CUDA path of the small end-to-end run (device: cuda), and the device-agnostic tests
step e2e_cuda 120 python - <<'EOF'
import pathlib, tempfile, yaml, pandas as pd
from bench.cli import main
root = pathlib.Path(tempfile.mkdtemp())
protocol = {
    "name": "tiny_cuda", "device": "cuda",
    "dataset": {"name": "glyphs", "options": {"image_size": 32, "max_classes": 40}},
    "split": {"validation_fraction": 0.25},
    "model": {"backbone": "mobilenet_v2", "pretrained": False, "trunk": "last_stage",
              "embedding_size": 32, "head_hidden": 64},
    "train": {"iterations": 30, "batch_size": 32, "m_per_class": 4, "validate_every": 10,
              "patience": 3, "precision": "bf16", "channels_last": True,
              "augmentation": {"random_resized_crop_scale": [0.5, 1.0], "crop_size": 28,
                               "horizontal_flip": 0.5}},
    "methods": [{"name": "contrastive", "params": {"loss": "ContrastiveLoss"}},
                {"name": "proxy_anchor", "params": {"loss": "ProxyAnchorLoss"}}],
}
path = root / "p.yaml"
path.write_text(yaml.safe_dump(protocol))
for precision in ("bf16", "fp16", "fp32"):
    protocol["train"]["precision"] = precision
    protocol["name"] = f"tiny_cuda_{precision}"
    path.write_text(yaml.safe_dump(protocol))
    assert main(["run", str(path), "--results", str(root / "r"), "--no-progress", "-j", "1"]) == 0
    rows = pd.read_csv(root / "r" / protocol["name"] / "results.csv")
    assert set(rows["device"]) == {"cuda"} and set(rows["precision"]) == {precision}
    print(precision, rows[rows.metric == "mean_average_precision_at_r"][["method", "model", "value"]]
          .to_string(index=False))
EOF
step tests_cuda 90 python -m pytest -q tests/test_torch_knn.py tests/test_pipeline.py \
  tests/test_train_loop.py -x -m "not slow"

# 2. images/s, ResNet-50 and BN-Inception, 224 px, batch 64: fp32 vs bf16, harness vs bare
step throughput 180 python benchmarks/gpu_throughput.py --images 1200 --iterations 25 \
  --root "$OUT_DIR/tree"

# 3. exact kNN at SOP scale: torch on the GPU vs faiss-cpu (P@1, R-Precision, MAP@R)
step knn_sop 90 python benchmarks/eval_speed.py --sop --impls ours torch --parts knn \
  --device cuda

echo "done; logs in $OUT_DIR; failed=$failed" | tee -a "$SUMMARY"
exit "$failed"

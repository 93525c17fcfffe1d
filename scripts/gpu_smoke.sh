#!/usr/bin/env bash
# GPU smoke check for datacull (issue #11): run on a machine with an NVIDIA GPU, from the repo root.
#   bash scripts/gpu_smoke.sh [--python PATH] [--dry-run]
# Installs faiss-gpu-cu12 if the loaded faiss build has no GPUs, then prints a small table:
#   faiss GPU vs CPU assignment agreement (datacull.kmeans.nearest_centroid, gpu=True vs False),
#   CUDA + AMP forward throughput of datacull's SmallConvNet encoder backbone,
#   GraNd vmap vs loop speed-up (scripts/bench_metrics.py --parts grand --device cuda),
#   DDP training under torchrun (datacull train, 1 epoch on synthetic data: one process per GPU with
#   nccl when there are >= 2 GPUs, else 2 CPU processes with gloo); checks exactly one result row.
# Each step has its own timeout; the whole script stays under 8 minutes.
# --dry-run checks the arguments and prints the steps without running them (works without a GPU).
set -euo pipefail

PYTHON=".venv/bin/python"
DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) [[ $# -ge 2 ]] || { echo "gpu_smoke.sh: --python needs a path" >&2; exit 2; }; PYTHON="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu_smoke.sh: unknown argument '$1' (use --python PATH, --dry-run, --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$PYTHON" ]] || { echo "gpu_smoke.sh: python '$PYTHON' not found; create the venv (scripts/setup_venv.sh) or pass --python" >&2; exit 2; }

step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  if [[ $DRY_RUN -eq 1 ]]; then echo "[dry-run] $name (timeout ${limit}s): ${*%%$'\n'*}"; return 0; fi
  echo "== $name"
  timeout "$limit" "$@" || echo "| $name | FAILED (exit $?) |"
}

if [[ $DRY_RUN -eq 0 ]]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader \
    || { echo "gpu_smoke.sh: no NVIDIA GPU visible (nvidia-smi missing)" >&2; exit 1; }
  ngpu=$("$PYTHON" -c "import faiss; print(faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0)")
  if [[ "$ngpu" == "0" ]]; then
    echo "faiss build has no GPUs: installing faiss-gpu-cu12"
    timeout 180 "$PYTHON" -m pip install -q faiss-gpu-cu12
  fi
fi

step "faiss GPU vs CPU" 120 "$PYTHON" - <<'EOF'
import time, numpy as np, faiss
from datacull.kmeans import nearest_centroid, train_spherical_kmeans
rng = np.random.default_rng(0)
rows = rng.normal(size=(200_000, 384)).astype(np.float16)
t = time.perf_counter(); cg = train_spherical_kmeans(rows, 1000, gpu=True); tg_train = time.perf_counter() - t
t = time.perf_counter(); ig, sg = nearest_centroid(rows, cg, gpu=True); tg = time.perf_counter() - t
t = time.perf_counter(); ic, sc = nearest_centroid(rows, cg, gpu=False); tc = time.perf_counter() - t
agree = (ig == ic).mean()
print(f"| faiss GPUs | {faiss.get_num_gpus()} |")
print(f"| GPU k-means train 200k x 384, k=1000 | {tg_train:.2f} s |")
print(f"| assignment agreement GPU vs CPU | {agree:.5f} (max |sim diff| {np.abs(sg - sc).max():.1e}) |")
print(f"| assignment GPU / CPU seconds | {tg:.2f} / {tc:.2f} |")
assert agree > 0.999, "faiss GPU and CPU assignments disagree"
EOF

step "embed throughput (CUDA + AMP)" 120 "$PYTHON" - <<'EOF'
import time, torch
from datacull.encoders.simclr import SmallConvNet
model = SmallConvNet(3, 64, 128).cuda().eval()
x = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8).pin_memory()
with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
    for i in range(25):
        if i == 5: torch.cuda.synchronize(); t = time.perf_counter()
        model(x.cuda(non_blocking=True).float() / 255)
torch.cuda.synchronize()
print(f"| SmallConvNet AMP forward | {20 * 512 / (time.perf_counter() - t):,.0f} images/s |")
EOF

step "GraNd vmap vs loop" 180 "$PYTHON" scripts/bench_metrics.py --parts grand --device cuda --repeats 3
step "DDP train under torchrun" 120 bash -c '
set -euo pipefail
py="$1"; work=$(mktemp -d); trap "rm -rf \"$work\"" EXIT
ngpu=$("$py" -c "import torch; print(torch.cuda.device_count())")
if [[ "$ngpu" -ge 2 ]]; then nproc=$ngpu; dev=cuda; else nproc=2; dev=cpu; echo "1 GPU: 2 CPU ranks (gloo); nccl needs >= 2 GPUs"; fi
"$py" -c "import sys, numpy as np, pandas as pd; pd.DataFrame({\"key\": [f\"synthetic/train/{i:06d}\" for i in range(256)], \"s\": np.arange(256.0)}).to_csv(sys.argv[1], index=False)" "$work/s.csv"
start=$(date +%s)
"$py" -m torch.distributed.run --standalone --nproc_per_node="$nproc" -m datacull.cli train data=synthetic \
  select.scores="$work/s.csv" select.metric=s select.fraction=0.5 train.epochs=1 train.batch_size=64 \
  device="$dev" paths.work_dir="$work/w"
rows=$(find "$work/w" -path "*/results/rows/*.json" | wc -l)
echo "| DDP datacull train, $nproc ranks on $dev | $rows result row, $(( $(date +%s) - start )) s |"
[[ "$rows" -eq 1 ]]
' _ "$PYTHON"

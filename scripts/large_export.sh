#!/usr/bin/env bash
# Measure init-model and the low-memory export at NextStep-1-Large size on this machine (too big for CI).
#
#   scripts/large_export.sh [WORK_DIR]        (default /tmp/nextstep-large; needs ~31 GB free for DTYPE=bf16)
#
# Steps, each under /usr/bin/time -v: init-model (random Large weights, streamed), export --low-memory of each graph
# on its own (so every graph gets its own wall time and peak RSS), export --check-only (the integrity checks), the
# whole export in one run, the check again after one bit of one weight is flipped (it must fail), and doctor --model
# (the estimates, printed next to the measurements). WORK_DIR/summary.txt keeps the numbers; the model and the
# artifacts are deleted at the end unless KEEP=1 (the disk is shared). PRESET=bench runs the same steps on the
# ~100M bench model: over 10 minutes here (its backbone trace alone took 9.6 min on 2 loaded cores).
set -euo pipefail

WORK=${1:-/tmp/nextstep-large}
DTYPE=${DTYPE:-bf16}
PRESET=${PRESET:-large}
GRAPHS=${GRAPHS:-"backbone head_step head_sampler head_sampler_edit vae_decoder vae_encoder"}
PROFILE=(--resolutions 256x256,512x512)   # the two sizes the VAE graphs and the KV capacity are sized for
MODEL="$WORK/model"
ART="$WORK/art"
SUMMARY="$WORK/summary.txt"
mkdir -p "$WORK"
: > "$SUMMARY"

free_gb() { df --output=avail -B1 "$WORK" | tail -1 | awk '{printf "%.2f", $1 / 1e9}'; }

measure() {   # measure NAME COMMAND...: run it, keep its output, append wall time / peak RSS / disk delta
    local name=$1; shift
    local before; before=$(free_gb)
    echo "== $name: $*" | tee -a "$SUMMARY"
    local status=0
    /usr/bin/time -v -o "$WORK/$name.time" "$@" > "$WORK/$name.out" 2>&1 || status=$?
    local wall rss after
    wall=$(grep "Elapsed (wall clock)" "$WORK/$name.time" | awk '{print $NF}')
    rss=$(grep "Maximum resident set size" "$WORK/$name.time" | awk '{printf "%.2f", $NF * 1024 / 1e9}')
    after=$(free_gb)
    printf "   wall %s  peak RSS %s GB  disk used %.2f GB (free %s -> %s GB)  exit %d\n" \
        "$wall" "$rss" "$(echo "$before - $after" | bc)" "$before" "$after" "$status" | tee -a "$SUMMARY"
    return $status
}

flip_bit() {  # flip_bit MODEL KEY: flip one bit inside tensor KEY of its shard (run twice to restore it)
    python -c 'import sys
from pathlib import Path
from nextstep_trt.export.external import checkpoint_tensors
from nextstep_trt.ref.weights import shard_files
t = checkpoint_tensors(Path(sys.argv[1]), shard_files(Path(sys.argv[1])))[sys.argv[2]]
with open(t.file, "r+b") as f:
    f.seek(t.offset + 12345); b = f.read(1); f.seek(t.offset + 12345); f.write(bytes([b[0] ^ 1]))' "$1" "$2"
}

echo "nextstep-trt $PRESET measurement, $(date -Is), $(nproc) cores, DTYPE=$DTYPE" | tee -a "$SUMMARY"
measure init nextstep-trt init-model --preset "$PRESET" --dtype "$DTYPE" "$MODEL"
du -sh "$MODEL" | tee -a "$SUMMARY"
for g in $GRAPHS; do
    measure "export_$g" nextstep-trt export --model "$MODEL" --out "$ART" --low-memory --dtype "$DTYPE" \
        --graphs "$g" "${PROFILE[@]}"
    grep -E "^exported|bf16w|fp32 " "$WORK/export_$g.out" | sed 's/^/   /' | tee -a "$SUMMARY" || true
done
du -sh "$ART" | tee -a "$SUMMARY"
measure integrity nextstep-trt export --model "$MODEL" --out "$ART" --dtype "$DTYPE" --check-only \
    --graphs "$(echo $GRAPHS | tr ' ' ',')" "${PROFILE[@]}" --report "$WORK/integrity.json"
sed 's/^/   /' "$WORK/integrity.out" | tee -a "$SUMMARY"
measure export_all nextstep-trt export --model "$MODEL" --out "$WORK/art_all" --low-memory --dtype "$DTYPE" \
    --graphs "$(echo $GRAPHS | tr ' ' ',')" "${PROFILE[@]}"
rm -rf "$WORK/art_all"
if echo " $GRAPHS " | grep -q " backbone "; then
    flip_bit "$MODEL" layers.3.self_attn.o_proj.weight
    if measure flipped nextstep-trt export --model "$MODEL" --out "$ART" --dtype "$DTYPE" --check-only \
        --graphs backbone --no-validate "${PROFILE[@]}"; then
        echo "   UNEXPECTED: the check passed on a flipped bit" | tee -a "$SUMMARY"
    else
        grep "error:" "$WORK/flipped.out" | sed 's/^/   expected failure: /' | tee -a "$SUMMARY"
    fi
    flip_bit "$MODEL" layers.3.self_attn.o_proj.weight
fi
measure doctor nextstep-trt doctor --model "$MODEL"
sed -n '/^model /,$p' "$WORK/doctor.out" | sed 's/^/   /' | tee -a "$SUMMARY"

if [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$MODEL" "$ART"
    echo "removed $MODEL and $ART (KEEP=1 keeps them)" | tee -a "$SUMMARY"
fi

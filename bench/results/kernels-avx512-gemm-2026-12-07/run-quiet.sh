#!/bin/bash
cd /work/main
OUT=/tmp/k2/results3; mkdir -p $OUT
for th in 1 2; do
  for v in head avx2 avx512; do
    if [ $v = head ]; then bin=/tmp/k2/head/build/bin/engine_bench; extra=""; else bin=build-k2/bin/engine_bench; extra="--path $v"; fi
    echo "=== threads $th variant $v load $(cut -d' ' -f1-3 /proc/loadavg) $(date +%T)" >> $OUT/layers.txt
    $bin --threads $th --types f16,q8_0,q4_0,q4_K --n-layer 2 --runs 1,4 --prefill 128 --seconds 1 --dir /tmp/k2 $extra 2>/dev/null >> $OUT/layers.txt
  done
done
echo DONE >> $OUT/layers.txt

#!/bin/sh
# Train the shared SentencePiece BPE vocabulary (deterministic: single thread, no sampling/shuffling).
# Usage: models/train/train_tokenizer.sh [corpus_dir] [out_prefix]
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
CORPUS=${1:-$HERE/work/corpus}
PREFIX=${2:-$HERE/../demo-tokenizer}
nice -n 19 spm_train \
  --input="$CORPUS/spm_input.txt" \
  --model_prefix="$PREFIX" \
  --model_type=bpe \
  --vocab_size=3072 \
  --character_coverage=1.0 \
  --byte_fallback=true \
  --split_digits=true \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
  --normalization_rule_name=identity \
  --remove_extra_whitespaces=false \
  --add_dummy_prefix=true \
  --max_sentence_length=65536 \
  --input_sentence_size=0 \
  --shuffle_input_sentence=false \
  --num_threads=1 \
  --minloglevel=1

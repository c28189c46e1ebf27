"""Token streams for training / validation (deterministic)."""
import json, os, random

import numpy as np
import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
BOS, EOS = 1, 2

# The chat format the models are trained on (and that tokenizer.chat_template renders):
#   <s>[INST] {user} [/INST] {assistant}</s>
CHAT_FMT = '[INST] {user} [/INST] {assistant}'


def load_jsonl(path):
    with open(path, encoding='utf-8') as f:
        return [json.loads(l) for l in f]


def build_train_stream(sp, corpus_dir, seed, chat_every=3):
    """Chapters and every `chat_every`-th dialogue pair, each as <s> ... </s>, shuffled with `seed`."""
    docs = [d['text'] for d in load_jsonl(os.path.join(corpus_dir, 'train_docs.jsonl'))]
    pairs = load_jsonl(os.path.join(corpus_dir, 'chat_pairs.jsonl'))[::chat_every] if chat_every else []
    docs += [CHAT_FMT.format(**p) for p in pairs]
    random.Random(seed).shuffle(docs)
    ids = []
    for d in docs:
        ids.append(BOS)
        ids.extend(sp.encode(d))
        ids.append(EOS)
    return np.array(ids, dtype=np.int64), len(pairs)


def build_val_stream(sp, corpus_dir):
    """Validation chapters as <s> + text (no </s>); returns (ids, n_bytes)."""
    docs = [d['text'] for d in load_jsonl(os.path.join(corpus_dir, 'val_docs.jsonl'))]
    ids, nbytes = [], 0
    for d in docs:
        ids.append(BOS)
        ids.extend(sp.encode(d))
        nbytes += len(d.encode('utf-8'))
    return np.array(ids, dtype=np.int64), nbytes


def load_sp(path=None):
    return spm.SentencePieceProcessor(model_file=path or os.path.join(HERE, '..', 'demo-tokenizer.model'))

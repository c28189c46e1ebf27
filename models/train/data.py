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


def build_train_stream(sp, corpus_dir, seed, chat_every=3, extra=False):
    """Chapters and every `chat_every`-th dialogue pair, each as <s> ... </s>, shuffled with `seed`; with
    `extra`, also the training chapters of prepare_extra.py (King James Bible, Moby Dick)."""
    docs = [d['text'] for d in load_jsonl(os.path.join(corpus_dir, 'train_docs.jsonl'))]
    if extra:
        docs += [d['text'] for d in load_jsonl(os.path.join(corpus_dir, 'extra_train_docs.jsonl'))]
    pairs = load_jsonl(os.path.join(corpus_dir, 'chat_pairs.jsonl'))[::chat_every] if chat_every else []
    docs += [CHAT_FMT.format(**p) for p in pairs]
    random.Random(seed).shuffle(docs)
    ids = []
    for d in docs:
        ids.append(BOS)
        ids.extend(sp.encode(d))
        ids.append(EOS)
    return np.array(ids, dtype=np.int64), len(pairs)


def build_val_stream(sp, corpus_dir, name='val_docs.jsonl'):
    """Validation chapters as <s> + text (no </s>); returns (ids, n_bytes).  The default is the Austen
    validation set; name='extra_val_docs.jsonl' gives the held-out chapters of prepare_extra.py."""
    docs = [d['text'] for d in load_jsonl(os.path.join(corpus_dir, name))]
    ids, nbytes = [], 0
    for d in docs:
        ids.append(BOS)
        ids.extend(sp.encode(d))
        nbytes += len(d.encode('utf-8'))
    return np.array(ids, dtype=np.int64), nbytes


def load_sp(path=None):
    return spm.SentencePieceProcessor(model_file=path or os.path.join(HERE, '..', 'demo-tokenizer.model'))


def save_streams(sp, corpus_dir, seed, chat_every, out_dir, extra=False):
    """Tokenize once and store the streams (int16) with their metadata, for machines where the corpus or the
    tokenizer build differs (train.py --streams).  Validation is always the Austen set."""
    os.makedirs(out_dir, exist_ok=True)
    train_ids, n_pairs = build_train_stream(sp, corpus_dir, seed, chat_every, extra)
    val_ids, val_bytes = build_val_stream(sp, corpus_dir)
    assert sp.get_piece_size() < 2 ** 15
    np.save(os.path.join(out_dir, 'train_ids.npy'), train_ids.astype(np.int16))
    np.save(os.path.join(out_dir, 'val_ids.npy'), val_ids.astype(np.int16))
    with open(os.path.join(out_dir, 'meta.json'), 'w') as f:
        json.dump({'seed': seed, 'chat_every': chat_every, 'n_pairs': n_pairs, 'val_bytes': val_bytes,
                   'n_vocab': sp.get_piece_size(), 'extra': extra, 'train_tokens': len(train_ids)}, f)


def load_streams(stream_dir, seed, chat_every):
    """(train_ids, n_pairs, val_ids, val_bytes) from save_streams' files, checked against seed/chat_every."""
    with open(os.path.join(stream_dir, 'meta.json')) as f:
        meta = json.load(f)
    assert (meta['seed'], meta['chat_every']) == (seed, chat_every), ('streams were built with', meta)
    train_ids = np.load(os.path.join(stream_dir, 'train_ids.npy')).astype(np.int64)
    val_ids = np.load(os.path.join(stream_dir, 'val_ids.npy')).astype(np.int64)
    return train_ids, meta['n_pairs'], val_ids, meta['val_bytes']


if __name__ == '__main__':
    import argparse
    ap = argparse.ArgumentParser(description='tokenize the corpus into .npy streams (train.py --streams)')
    ap.add_argument('--out', required=True)
    ap.add_argument('--corpus', default=os.path.join(HERE, 'work', 'corpus'))
    ap.add_argument('--seed', type=int, default=1234)
    ap.add_argument('--chat-every', type=int, default=3)
    ap.add_argument('--extra', action='store_true', help='add the prepare_extra.py chapters to the training stream')
    a = ap.parse_args()
    save_streams(load_sp(), a.corpus, a.seed, a.chat_every, a.out, a.extra)

#!/usr/bin/env python3
"""Extract, clean and split the training corpus for the PipeInfer demo models.

Source: the six Jane Austen novels shipped in Debian's `r-cran-janeaustenr` (R data files; public-domain
text from Project Gutenberg).  R itself is a dependency of that package, so we ask `Rscript` to dump the
`austen_books()` data frame as TSV and do everything else here.

Output (under --out, default models/train/work/corpus):
  train_docs.jsonl / val_docs.jsonl   one JSON object per chapter: {"book", "chapter", "text"}; paragraphs are
                                      unwrapped (hard line breaks -> single spaces) and joined with "\n".
  chat_pairs.jsonl                    pseudo-chat pairs (train chapters only): consecutive short dialogue
                                      paragraphs {"user", "assistant"}; used to teach the [INST] template.
  spm_input.txt                       one training paragraph per line (tokenizer training input).
  stats.json                          counts.

The hold-out is deterministic: within each book, chapters are shuffled with random.Random(seed) and the first
ceil(5% of chapters) are validation chapters.
"""
import argparse, json, math, os, random, re, subprocess, sys

HEADING = re.compile(r'^(CHAPTER|Chapter|VOLUME|Volume)\b')


def dump_austen_tsv(path):
    r = ('library(janeaustenr); x <- austen_books(); '
         'write.table(x, "%s", sep="\\t", quote=FALSE, row.names=FALSE, fileEncoding="UTF-8")' % path)
    subprocess.run(['Rscript', '-e', r], check=True)


def clean_paragraph(lines):
    s = ' '.join(l.strip() for l in lines)
    s = s.replace('_', '')                 # Gutenberg _emphasis_ markers
    s = re.sub(r'\s+', ' ', s).strip()     # collapse the double spaces after full stops
    return s


def paragraphs(lines):
    """Cleaned paragraphs of hard-wrapped text: runs of non-blank lines separated by blank lines."""
    out, para = [], []
    for line in lines + ['']:
        if line.strip():
            para.append(line)
            continue
        p = clean_paragraph(para) if para else ''
        if p:
            out.append(p)
        para = []
    return out


def parse_books(tsv_path):
    """Returns list of (book, chapter_index, [paragraphs]) in source order."""
    books = {}
    order = []
    with open(tsv_path, encoding='utf-8') as f:
        header = f.readline()
        assert header.rstrip('\n') == 'text\tbook', header
        for line in f:
            line = line.rstrip('\n')
            text, book = line.rsplit('\t', 1)
            if book not in books:
                books[book] = []
                order.append(book)
            books[book].append(text)
    chapters = []
    for book in order:
        cur = None          # lines of the current chapter (None before the first heading)
        idx = 0
        for text in books[book]:
            if HEADING.match(text.strip()):
                if text.strip().upper().startswith('CHAPTER'):
                    if cur is not None and paragraphs(cur):
                        chapters.append((book, idx, paragraphs(cur)))
                        idx += 1
                    cur = []
                elif cur is not None:
                    cur.append('')  # a VOLUME line inside a chapter ends a paragraph
                continue
            if cur is not None:
                cur.append(text)
        if cur is not None and paragraphs(cur):
            chapters.append((book, idx, paragraphs(cur)))
    return chapters


def is_dialogue(p):
    return '"' in p


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument('--out', default=os.path.join(here, 'work', 'corpus'))
    ap.add_argument('--seed', type=int, default=1234)
    ap.add_argument('--val-frac', type=float, default=0.05)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tsv = os.path.join(args.out, 'austen.tsv')
    dump_austen_tsv(tsv)
    chapters = parse_books(tsv)

    rng = random.Random(args.seed)
    by_book = {}
    for c in chapters:
        by_book.setdefault(c[0], []).append(c)
    val_keys = set()
    for book in by_book:            # dict preserves source order -> deterministic
        idxs = [c[1] for c in by_book[book]]
        rng.shuffle(idxs)
        k = max(1, math.ceil(args.val_frac * len(idxs)))
        for i in idxs[:k]:
            val_keys.add((book, i))

    stats = {'chapters': len(chapters), 'train_chapters': 0, 'val_chapters': 0,
             'train_bytes': 0, 'val_bytes': 0, 'chat_pairs': 0, 'paragraphs': 0}
    pairs = []
    with open(os.path.join(args.out, 'train_docs.jsonl'), 'w', encoding='utf-8') as ft, \
         open(os.path.join(args.out, 'val_docs.jsonl'), 'w', encoding='utf-8') as fv, \
         open(os.path.join(args.out, 'spm_input.txt'), 'w', encoding='utf-8') as fs:
        for book, idx, paras in chapters:
            text = '\n'.join(paras)
            rec = json.dumps({'book': book, 'chapter': idx + 1, 'text': text}, ensure_ascii=False)
            stats['paragraphs'] += len(paras)
            if (book, idx) in val_keys:
                fv.write(rec + '\n')
                stats['val_chapters'] += 1
                stats['val_bytes'] += len(text.encode('utf-8'))
            else:
                ft.write(rec + '\n')
                stats['train_chapters'] += 1
                stats['train_bytes'] += len(text.encode('utf-8'))
                for p in paras:
                    fs.write(p + '\n')
                for a, b in zip(paras, paras[1:]):
                    if is_dialogue(a) and is_dialogue(b) and 20 <= len(a) <= 400 and 20 <= len(b) <= 600:
                        pairs.append({'user': a, 'assistant': b})
    with open(os.path.join(args.out, 'chat_pairs.jsonl'), 'w', encoding='utf-8') as fc:
        for p in pairs:
            fc.write(json.dumps(p, ensure_ascii=False) + '\n')
    stats['chat_pairs'] = len(pairs)
    stats['val_keys'] = sorted('%s #%d' % (b, i + 1) for b, i in val_keys)
    with open(os.path.join(args.out, 'stats.json'), 'w') as f:
        json.dump(stats, f, indent=1)
    print(json.dumps({k: v for k, v in stats.items() if k != 'val_keys'}))


if __name__ == '__main__':
    main()

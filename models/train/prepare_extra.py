#!/usr/bin/env python3
"""Extra public-domain English prose for the target model, from Debian packages:

  * the King James Bible (`bible-kjv` + `bible-kjv-text`): `bible` prints every chapter; a chapter becomes one
    document, its verses (without their numbers) joined into one paragraph;
  * Herman Melville's *Moby Dick* (`r-cran-tokenizers`, data set `mobydick`, Project Gutenberg text): the
    Gutenberg header and licence and the front matter (etymology, extracts) are dropped, each chapter (1-135
    and the epilogue) becomes one document, hard line breaks are unwrapped into paragraphs joined by "\n",
    chapter headings are dropped.

Held out like the Austen chapters: within each book, chapters shuffled with random.Random(seed), the first
ceil(5%) are validation chapters.  Writes extra_train_docs.jsonl and extra_val_docs.jsonl next to the Austen
files (--out); the Austen files and the tokenizer input are not touched.
"""
import argparse, json, math, os, random, re, subprocess

from prepare_corpus import clean_paragraph, paragraphs

KJV_HEAD = re.compile(r'^(\S.*\S) (\d+)$')          # "Genesis 1", "1 Kings 3", "Song of Solomon 2"
KJV_VERSE = re.compile(r'^\s+(\d+) (.*)$')


def kjv_chapters():
    out = subprocess.run(['bible', '-l100000', 'gen1:1-rev22:21'], check=True, capture_output=True,
                         text=True).stdout
    chapters, cur, name = [], None, None
    for line in out.split('\n'):
        if not line.strip():
            continue
        m = KJV_HEAD.match(line)
        if m and not line.startswith(' '):
            if cur:
                chapters.append(('King James Bible', name, [clean_paragraph(cur)]))
            name, cur = line.strip(), []
            continue
        v = KJV_VERSE.match(line)
        assert v and cur is not None, 'unexpected line from bible: %r' % line
        cur.append(v.group(2))
    if cur:
        chapters.append(('King James Bible', name, [clean_paragraph(cur)]))
    assert len(chapters) == 1189, len(chapters)
    return chapters


def moby_chapters():
    text = subprocess.run(['Rscript', '-e', 'library(tokenizers); cat(mobydick)'], check=True,
                          capture_output=True, text=True).stdout
    lines = text.replace('\r', '').split('\n')
    start = next(i for i, l in enumerate(lines) if l.startswith('CHAPTER 1. Loomings.'))
    end = next(i for i, l in enumerate(lines) if l.startswith('*** END OF THIS PROJECT GUTENBERG'))
    chapters, cur, name = [], None, None
    for l in lines[start:end]:
        if re.match(r'^(CHAPTER \d+\.|Epilogue$)', l.strip()):
            if cur:
                chapters.append(('Moby Dick', name, paragraphs(cur)))
            name, cur = l.strip(), []
        else:
            cur.append(l)
    chapters.append(('Moby Dick', name, paragraphs(cur)))
    assert len(chapters) == 136, len(chapters)
    return chapters


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.path.join(here, 'work', 'corpus'))
    ap.add_argument('--seed', type=int, default=1234)
    ap.add_argument('--val-frac', type=float, default=0.05)
    a = ap.parse_args()
    stats = {}
    with open(os.path.join(a.out, 'extra_train_docs.jsonl'), 'w', encoding='utf-8') as ft, \
            open(os.path.join(a.out, 'extra_val_docs.jsonl'), 'w', encoding='utf-8') as fv:
        for chapters in (kjv_chapters(), moby_chapters()):
            book = chapters[0][0]
            idxs = list(range(len(chapters)))
            random.Random(a.seed).shuffle(idxs)
            val = set(idxs[:max(1, math.ceil(a.val_frac * len(idxs)))])
            st = stats.setdefault(book, {'chapters': len(chapters), 'val_chapters': len(val), 'train_bytes': 0,
                                         'val_bytes': 0})
            for i, (_, name, paras) in enumerate(chapters):
                text = '\n'.join(paras)
                rec = json.dumps({'book': book, 'chapter': name, 'text': text}, ensure_ascii=False)
                (fv if i in val else ft).write(rec + '\n')
                st['val_bytes' if i in val else 'train_bytes'] += len(text.encode('utf-8'))
    with open(os.path.join(a.out, 'extra_stats.json'), 'w') as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats))


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""Build Sophia's knowledge base: embed the workspace's documents and write a
FAISS index that `faiss.read_index` loads, beside a JSON file naming the
passage behind each vector (written by nova, spark-sophia plan, lumina agent).

Documents are the Markdown, text and reStructuredText files under --docs
(default: docs/ and the workspace's README). Each is cut into passages of
about --chunk characters on paragraph boundaries; each passage is embedded
and normalised, so the index's inner product is the cosine similarity.

The model (--model, or $NOVA_KB_MODEL) is `wordllama` by default: the small
static embedding model the wordllama package carries in its wheel, which
runs on a CPU and downloads nothing. Any other value is a sentence-transformers
model (a name the library can load, or a local folder), for hosts that have
sentence-transformers and a GPU.

--query TEXT searches an index built before and prints the best passages.
Exits 2 when there is nothing to index or an argument is wrong, naming it.
"""

import argparse
import json
import os
import sys
from pathlib import Path

SUFFIXES = {".md", ".txt", ".rst"}


def documents(roots):
    """Every document file under the roots, sorted, each once."""
    seen = set()
    for root in roots:
        path = Path(root)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if f.suffix.lower() in SUFFIXES and f.resolve() not in seen:
                seen.add(f.resolve())
                yield f


def passages(text, size):
    """Paragraphs joined into passages of at most about `size` characters."""
    out, current = [], ""
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        if current and len(current) + len(para) + 2 > size:
            out.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    if current:
        out.append(current)
    return out


def embed(model, texts):
    """Unit-length float32 vectors of `texts`, one row each."""
    if model == "wordllama":
        import wordllama

        # The package's own folder holds its weights and tokenizer; as the
        # cache folder it makes load() find both without a download.
        wl = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent)
        vectors = wl.embed(texts, norm=True)
    else:
        from sentence_transformers import SentenceTransformer

        vectors = SentenceTransformer(model).encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    return vectors.astype("float32")


def search(args):
    """Print the --top passages of the index at --out nearest to --query."""
    out = Path(args.out)
    meta_path = out.with_name(out.name + ".json")
    if not out.is_file() or not meta_path.is_file():
        print(f"build_knowledge_base: no index at {out} (or its {meta_path.name}); build it first", file=sys.stderr)
        return 2
    import faiss

    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    index = faiss.read_index(str(out))
    scores, ids = index.search(embed(meta["model"], [args.query]), min(args.top, index.ntotal))
    for score, i in zip(scores[0], ids[0]):
        p = meta["passages"][i]
        print(f"{score:.3f}\t{p['file']}#{p['passage']}\t{p['text'][:100]!r}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", nargs="+", default=["docs", "README.md"],
                        help="files or folders of documents (default: docs/ and README.md)")
    parser.add_argument("--out", required=True, help="the FAISS index to write")
    parser.add_argument("--model", default=os.environ.get("NOVA_KB_MODEL") or "wordllama",
                        help="wordllama, or a sentence-transformers model name or folder (default: $NOVA_KB_MODEL or wordllama)")
    parser.add_argument("--chunk", type=int, default=1000, help="passage size in characters (default 1000)")
    parser.add_argument("--query", help="search the index at --out for this text instead of building it")
    parser.add_argument("--top", type=int, default=3, help="passages --query prints (default 3)")
    args = parser.parse_args()
    if args.chunk < 100:
        parser.error("--chunk: at least 100 characters")
    if args.top < 1:
        parser.error("--top: at least 1")
    if args.query is not None:
        return search(args)

    chunks, sources = [], []
    for doc in documents(d for d in args.docs if Path(d).exists()):
        for i, passage in enumerate(passages(doc.read_text(encoding="utf-8", errors="replace"), args.chunk)):
            chunks.append(passage)
            sources.append({"file": str(doc), "passage": i, "text": passage[:200]})
    if not chunks:
        print(f"build_knowledge_base: no documents (.md, .txt, .rst) under {' '.join(args.docs)}", file=sys.stderr)
        return 2

    import faiss  # imported late: --help and argument errors need neither

    vectors = embed(args.model, chunks)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out))
    meta = out.with_name(out.name + ".json")
    meta.write_text(json.dumps({"model": args.model, "passages": sources}, indent=1), encoding="utf-8")
    print(f"build_knowledge_base: {index.ntotal} passages from {len({s['file'] for s in sources})} documents -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

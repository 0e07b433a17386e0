"""Reference sentence embeddings of all-mpnet-base-v2 for tests/mpnet.rs.

usage: mpnet_reference.py MODEL_DIR TEXT OUT_JSON

MODEL_DIR is the `mpnet` built-in model (`quantsmith fetch mpnet` prints it), TEXT
data/text/austen_prideprejudice.txt. Written with torch 2.15.0 / transformers 5.24.0 (the
pinned venv of export_layouts.rs: compressed-tensors==0.20.1, torch==2.15.0,
transformers==5.24.0), CPU.

The embeddings are computed as sentence-transformers' SentenceTransformer.encode computes them
for this model (modules.json: Transformer → Pooling(mean) → Normalize), written out here so
that sentence-transformers itself is not needed: the fast tokenizer from tokenizer.json with
padding and truncation at sentence_bert_config.json's max_seq_length (384); MPNetModel's
last hidden state; the mean over the attention mask; L2 normalisation. The model runs in
float64 (the weights are f32, widened exactly), so the reference carries no f32 rounding of
its own; the sentences run as one padded batch, which exercises the attention mask and the
padding-aware position ids of the reference.

Sentences: the text is split as quantsmith's eval/encoder.rs splits it (wrapped lines joined
into paragraphs, cut after . ! ? followed by whitespace); 20 are taken at evenly spaced
indices, plus one synthetic text longer than max_seq_length, which tests truncation and
relative positions beyond the bucket range (128).
"""

import json
import math
import re
import sys

import torch
from transformers import AutoTokenizer, MPNetModel


def split_sentences(text):
    out, para = [], []

    def flush():
        p = " ".join(para)
        start = 0
        for m in re.finditer(r"[.!?](?=\s)", p):
            s = p[start : m.end()].strip()
            if s:
                out.append(s)
            start = m.end()
        s = p[start:].strip()
        if s:
            out.append(s)

    for line in text.splitlines():
        line = line.strip()
        if not line:
            flush()
            para.clear()
        else:
            para.append(line)
    flush()
    return out


def main():
    model_dir, text_path, out_path = sys.argv[1:4]
    with open(f"{model_dir}/sentence_bert_config.json") as f:
        max_len = json.load(f)["max_seq_length"]
    with open(text_path, encoding="utf-8") as f:
        sentences = split_sentences(f.read())
    n = 20
    picked = [sentences[(i * (len(sentences) - 1)) // (n - 1)] for i in range(n)]
    picked.append(" ".join(f"word{i % 50}" for i in range(600)))

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = MPNetModel.from_pretrained(model_dir, add_pooling_layer=False).double().eval()
    batch = tok(picked, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(pooled, p=2, dim=1)

    cases = []
    for i, s in enumerate(picked):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        cases.append(
            {
                "text": s,
                "ids": ids,
                "pooled_norm": round(float(pooled[i].norm()), 6),
                "embedding": [float(f"{v:.6f}") for v in emb[i].tolist()],
            }
        )
    out = {
        "model": "all-mpnet-base-v2 (quantsmith built-in `mpnet`)",
        "generator": "crates/quantsmith/tests/py/mpnet_reference.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "max_seq_length": max_len,
        "dim": int(emb.shape[1]),
        "sentences": cases,
    }
    assert all(math.isfinite(v) for c in cases for v in c["embedding"])
    with open(out_path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(cases)} sentences to {out_path}")


if __name__ == "__main__":
    main()

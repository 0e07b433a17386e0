"""Logits of a Llama model directory as transformers computes them.

usage: llama_logits.py DIR TOKENS N_SEQ OUT

TOKENS holds little-endian u32 token ids, N_SEQ sequences of equal length one after another.
The model is loaded in f32 with AutoModelForCausalLM; every tensor of the directory must be
used and none of the model's left uninitialised (a bias the config does not announce, or one
it announces and the files lack, fails here). OUT receives the logits, [N_SEQ, len, vocab],
as little-endian f32.
"""

import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    d, tokens, n_seq, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    ids = np.fromfile(tokens, dtype="<u4").astype(np.int64).reshape(n_seq, -1)
    model, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        print(f"{d}: loading info {bad}")
        sys.exit(1)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)).logits
    logits.float().numpy().astype("<f4").tofile(out)
    print(f"{d}: logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()

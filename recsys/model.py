"""fMRLRec: multimodal sequential recommender with full-scale Matryoshka item embeddings.

    item features (torchrec tables, frozen)  --+
    nested item-id table (optional)          --+--> Projector --> E (N+1, D), row 0 = 0
    seq (B, L) --> E[seq] --> dropout --> Backbone (LRU, nested) --> h (B, L, D)
    scores at size d: h[:, :d] . E[:, :d]^T;  loss: Matryoshka CE over every size
    scoring (``score``) reads the last position only: ``encode_last`` computes just that
    (``Backbone.forward_last``); training (``encode``) every position

Every weight is nested (see recsys/nn/nested.py), so ``model.slice(d)`` is an ordinary model
of width d whose scores equal this model's size-d scores. A backbone whose weights are not
nested (sasrec) slices to itself with its output cut to d (``TruncatedBackbone``): the sliced
model keeps the item embeddings at the width the backbone reads.

Example::

    >>> cfg = ModelConfig(ladder=(4, 8), backbone=LRUConfig(num_blocks=1))
    >>> model = MatryoshkaRecModel(cfg, num_items=10, feature_dims={"text": 12})
    >>> model.score(torch.tensor([[0, 3, 5]])).shape
    torch.Size([2, 1, 11])
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from data_prep.layout import CATEGORICAL  # the modality of categorical fields (genres, year, ...)
from recsys.losses.matryoshka import matryoshka_cross_entropy
from recsys.nn import BackboneConfig, LRUConfig, backbone_config_from_dict, build_backbone
from recsys.nn.backbone import is_int
from recsys.nn.dropout import Dropout
from recsys.nn.item_tables import ItemTables
from recsys.nn.nested import set_cross_size_grad, sliced_state_dict, truncate_ladder, validate_ladder
from recsys.nn.projector import Projector
from recsys.scoring import score_items

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_LADDER = (8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class ModelConfig:
    """Model-level settings; the backbone's own are its config object (recsys/nn: LRUConfig, ...).

    ``backbone.ladder`` and ``backbone.max_len`` are set to the model's when unset. The backbone's
    ladder may extend past the model's (the sizes the model scores): the backbone then runs at its
    own width D, its output cut to the model's width d, and the item embeddings keep width D,
    which the backbone reads (how a non-nested backbone is sliced).
    """

    ladder: tuple[int, ...] = DEFAULT_LADDER  # increasing; last = width d of the scores
    max_len: int = 50
    backbone: BackboneConfig = field(default_factory=LRUConfig)
    modalities: tuple[str, ...] = ("text",)
    use_id_table: bool = False  # trainable nested item-id table added to the projected features
    trainable_features: bool = False  # modality tables frozen by default
    projector_hidden: int = 0  # 0: one nested linear F -> D; k > 0: F -> k*D -> SiLU -> D
    categorical_dim: int = 32  # width C of each categorical field's table (modality "categorical")
    categorical_pooling: str = "mean"  # mean | sum over an item's values of a field
    # cap on the (M, chunk, N+1) logits of the loss; None: by device (recsys.losses.matryoshka.loss_budget_bytes)
    loss_budget_bytes: int | None = None
    # gradient rule of the nested layers (recsys.nn.nested.set_cross_size_grad): 1 = exact gradient
    cross_size_grad: float = 1.0

    def __post_init__(self) -> None:
        # Hydra/JSON hand over lists; the config is hashable and comparable with tuples.
        try:
            self.ladder = validate_ladder(self.ladder)
        except (ValueError, TypeError) as err:
            raise ValueError(f"ladder: {err}") from None
        self.modalities = tuple(self.modalities)
        checks = {
            "max_len": is_int(self.max_len) and self.max_len >= 1,
            "backbone": isinstance(self.backbone, BackboneConfig),
            "modalities": all(isinstance(m, str) and m for m in self.modalities)
            and len(set(self.modalities)) == len(self.modalities)
            and (len(self.modalities) > 0 or self.use_id_table),
            "projector_hidden": is_int(self.projector_hidden) and self.projector_hidden >= 0,
            "categorical_dim": is_int(self.categorical_dim)
            and self.categorical_dim > 0
            and self.categorical_dim % 4 == 0,
            "categorical_pooling": self.categorical_pooling in ("mean", "sum"),
            "loss_budget_bytes": self.loss_budget_bytes is None
            or (is_int(self.loss_budget_bytes) and self.loss_budget_bytes > 0),
            "cross_size_grad": isinstance(self.cross_size_grad, (int, float))
            and 0.0 <= float(self.cross_size_grad) <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid ModelConfig.{name}: {getattr(self, name)!r}")
        unset = {k: getattr(self, k) for k in ("ladder", "max_len") if getattr(self.backbone, k) is None}
        if unset:
            self.backbone = dataclasses.replace(self.backbone, **unset)
        if self.backbone.ladder[: len(self.ladder)] != self.ladder:
            raise ValueError(
                f"invalid ModelConfig.backbone.ladder: {self.backbone.ladder} does not begin with "
                f"the model's ladder {self.ladder}"
            )
        if self.backbone.max_len != self.max_len:
            raise ValueError(
                f"invalid ModelConfig.backbone.max_len: {self.backbone.max_len} != max_len {self.max_len}"
            )

    @property
    def width(self) -> int:
        """d, the largest size scored."""
        return self.ladder[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, the backbone as ``_target_`` + its fields."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**data, "backbone": self.backbone.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict` (the backbone rebuilt from the registry, nothing imported)."""
        return cls(**{**data, "backbone": backbone_config_from_dict(data.get("backbone"))})


class MatryoshkaRecModel(nn.Module):
    """Nested sequential recommender. ``num_items`` = N (ids 1..N, 0 = padding);
    ``feature_dims``: modality -> F, for every dense modality of the config (all but ``categorical``);
    ``categorical``: {field: {"vocab_size": V, "nnz": values over all items}} when the config's
    modalities include ``categorical`` (genres, year, ... pooled by a torchrec EmbeddingBagCollection)."""

    def __init__(
        self,
        config: ModelConfig,
        num_items: int,
        feature_dims: dict[str, int],
        categorical: dict[str, dict[str, int]] | None = None,
    ):
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        dense = [m for m in config.modalities if m != CATEGORICAL]
        missing = [m for m in dense if m not in feature_dims]
        if missing:
            raise ValueError(f"feature_dims lacks modalities {missing}")
        if (CATEGORICAL in config.modalities) != bool(categorical):
            raise ValueError(
                f"modality '{CATEGORICAL}' needs categorical fields and the fields need the modality: "
                f"modalities {list(config.modalities)}, fields {sorted(categorical or {})}"
            )
        self.config, self.num_items = config, num_items
        self.feature_dims = {m: int(feature_dims[m]) for m in dense}
        self.categorical = {
            f: {k: int(v) for k, v in spec.items()} for f, spec in (categorical or {}).items()
        }
        if any(f <= 0 for f in self.feature_dims.values()):
            raise ValueError(f"feature_dims must be positive, got {self.feature_dims}")
        # The item embeddings are the backbone's inputs, so they have its width (> d only when the
        # backbone's output is cut to d, see ModelConfig).
        backbone_ladder = config.backbone.ladder
        self.tables = ItemTables(
            num_items,
            self.feature_dims,
            backbone_ladder[-1],
            config.use_id_table,
            config.trainable_features,
            self.categorical,
            config.categorical_dim,
            config.categorical_pooling,
        )
        in_features = sum(self.feature_dims.values()) + len(self.categorical) * config.categorical_dim
        self.projector = Projector(backbone_ladder, in_features, config.projector_hidden)
        self.input_dropout = Dropout(config.backbone.dropout)
        self.backbone = build_backbone(config.backbone, config.width)
        self.register_buffer("item_ids", torch.arange(num_items + 1), persistent=False)
        set_cross_size_grad(self, config.cross_size_grad)

    @property
    def ladder(self) -> tuple[int, ...]:
        """The sizes this model scores."""
        return self.config.ladder

    def load_item_features(self, features: dict[str, torch.Tensor], categorical: dict | None = None) -> None:
        """Copy one (N+1, F) table per dense modality into the torchrec tables, and the categorical
        fields' bags (``recsys.data.CategoryBags`` per field) when the model has them."""
        self.tables.load_features(features)
        if self.categorical:
            if categorical is None:
                raise ValueError(
                    f"the model has categorical fields {sorted(self.categorical)}: pass their bags"
                )
            self.tables.load_categorical(categorical)

    def item_embeddings(self) -> torch.Tensor:
        """(N+1, D): every catalog item through tables + projector; row 0 (padding) is zero.
        D is the backbone's input width (the model's width d unless the backbone's output is cut)."""
        features, id_emb = self.tables(self.item_ids)  # (N+1, sum F), (N+1, D)
        emb = self.projector(features, id_emb)
        return emb * (self.item_ids != 0)[:, None].to(emb.dtype)

    def encode(self, seq: torch.Tensor, item_emb: torch.Tensor | None = None) -> torch.Tensor:
        """seq (B, L) left-padded with 0 -> hidden (B, L, d). ``item_emb`` (N+1, D) reused if given."""
        if item_emb is None:
            item_emb = self.item_embeddings()
        x = self.input_dropout(item_emb[seq])  # (B, L, D)
        return self.backbone(x, seq != 0)

    def encode_at(
        self, seq: torch.Tensor, at: torch.Tensor, item_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """seq (B, L) left-padded, at (B, L) bool -> hidden (P, d) at the P positions of ``at``
        (row-major), ``encode(seq)[at]``, computing after the last recurrence only what those need
        (``Backbone.forward_at``): the training losses read the scored positions only."""
        if item_emb is None:
            item_emb = self.item_embeddings()
        return self.backbone.forward_at(self.input_dropout(item_emb[seq]), seq != 0, at)

    def encode_last(
        self, seq: torch.Tensor, item_emb: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        """seq (B, L) left-padded -> (B, d): ``encode(seq)[:, -1]``, computing only what the last
        position needs (``Backbone.forward_last``), as scoring reads nothing else. ``cache``: a dict
        kept across calls with the same ``item_emb`` and unchanged weights (inference only), where
        the backbone keeps what it computes per catalog item (``Backbone.forward_last_items``)."""
        if item_emb is None:
            item_emb = self.item_embeddings()
        if self.training and self.input_dropout.p > 0:  # dropout draws per position, not per item
            return self.backbone.forward_last(self.input_dropout(item_emb[seq]), seq != 0)
        return self.backbone.forward_last_items(item_emb, seq, cache)

    def loss(
        self,
        seq: torch.Tensor,
        targets: torch.Tensor,
        size_weights: Sequence[float] | None = None,
        cross_size_grad: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """seq (B, L), targets (B, L) next items (0 = ignored) -> (total scalar, per_size (M,) detached).
        ``cross_size_grad``: the loss's gradient rule at the scores (see ``matryoshka_cross_entropy``)."""
        item_emb = self.item_embeddings()
        keep = targets != 0
        return matryoshka_cross_entropy(
            self.encode_at(seq, keep, item_emb),
            targets[keep],
            item_emb,
            self.ladder,
            size_weights,
            self.config.loss_budget_bytes,
            cross_size_grad=cross_size_grad,
        )

    def score(
        self,
        seq: torch.Tensor,
        item_emb: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
        cache: dict | None = None,
    ) -> torch.Tensor:
        """seq (B, L) left-padded -> (M, B, N+1) scores of the last position at every size; column 0 = -inf.

        ``dtype`` (e.g. ``torch.float64``): the final dot products are accumulated in that precision.
        Evaluation uses float64 because every score carries a common offset that grows with d (item
        embeddings share a mean direction), so float32 rounding would reorder near-ties at large d.
        ``cache``: see :meth:`encode_last` (evaluation passes one dict for all its batches).
        """
        if item_emb is None:
            item_emb = self.item_embeddings()
        last = self.encode_last(seq, item_emb, cache)  # (B, d)
        if dtype is not None:
            last, item_emb = last.to(dtype), item_emb.to(dtype)
        return score_items(last, item_emb, self.ladder)  # (M, B, N+1)

    def slice(self, d: int) -> MatryoshkaRecModel:
        """Standalone model of width d whose scores equal this model's at every size up to d
        (ValueError if d is not in the ladder): the ``[:d]`` slices of the weights, the backbone
        sliced by ``Backbone.slice(d)`` (not nested: all its weights, output cut to d, and the item
        embeddings kept at the width it reads)."""
        ladder = truncate_ladder(self.ladder, d)
        backbone = self.backbone.slice(d)
        config = dataclasses.replace(self.config, ladder=ladder, backbone=backbone.config)
        small = MatryoshkaRecModel(config, self.num_items, self.feature_dims, self.categorical)
        width = backbone.config.width  # the item embeddings' width: what the backbone reads
        state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
        for name in ("tables", "projector"):
            state.update({f"{name}.{k}": v for k, v in sliced_state_dict(getattr(self, name), width).items()})
        small.load_state_dict(state)
        return small.to(self.item_ids.device).train(self.training)

    def save(self, directory: str | Path) -> None:
        """Write model.safetensors (weights) and config.json (config, num_items, feature_dims)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        meta = {
            "config": self.config.to_dict(),
            "num_items": self.num_items,
            "feature_dims": self.feature_dims,
            "categorical": self.categorical,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> MatryoshkaRecModel:
        """Inverse of :meth:`save`."""
        directory = Path(directory)
        meta = json.loads((directory / CONFIG_FILE).read_text())
        model = cls(
            ModelConfig.from_dict(meta["config"]),
            meta["num_items"],
            meta["feature_dims"],
            meta.get("categorical"),
        )
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device=str(map_location)))
        return model.to(map_location)

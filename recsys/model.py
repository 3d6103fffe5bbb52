"""fMRLRec: multimodal sequential recommender with full-scale Matryoshka item embeddings.

    item features (torchrec tables, frozen)  --+
    nested item-id table (optional)          --+--> Projector --> E (N+1, D), row 0 = 0
    seq (B, L) --> E[seq] --> dropout --> Backbone (LRU, nested) --> h (B, L, D)
    scores at size d: h[:, :d] . E[:, :d]^T;  loss: Matryoshka CE over every size

Every weight is nested (see recsys/nn/nested.py), so ``model.slice(d)`` is an ordinary model
of width d whose scores equal this model's size-d scores. For a backbone whose weights are not
nested (``backbone.nested`` False: sasrec, MRL-style) ``slice(d)`` keeps the full-width weights
and sets ``config.output_size = d``: the hidden state is truncated to ``[:d]`` and ``score``
returns size d only (M = 1), equal to this model's size-d scores.

Example::

    >>> cfg = ModelConfig(ladder=(4, 8), num_blocks=1)
    >>> model = MatryoshkaRecModel(cfg, num_items=10, feature_dims={"text": 12})
    >>> model.score(torch.tensor([[0, 3, 5]])).shape
    torch.Size([2, 1, 11])
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recsys.losses.matryoshka import DEFAULT_BUDGET_BYTES, all_size_logits, matryoshka_cross_entropy
from recsys.nn import build_backbone
from recsys.nn.item_tables import ItemTables
from recsys.nn.nested import sliced_state_dict, truncate_ladder, validate_ladder
from recsys.nn.projector import Projector

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class ModelConfig:
    ladder: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)  # increasing; last = width D
    max_len: int = 50
    backbone: str = "lru"  # registry name (recsys.nn.backbone)
    num_blocks: int = 2
    dropout: float = 0.1
    ffn_multiplier: int = 4  # hidden width of the nested gated FFN = k * D
    lru_r_min: float = 0.0
    lru_r_max: float = 0.1  # ring init radii, as in LRURec
    modalities: tuple[str, ...] = ("text",)
    use_id_table: bool = False  # trainable nested item-id table added to the projected features
    trainable_features: bool = False  # modality tables frozen by default
    projector_hidden: int = 0  # 0: one nested linear F -> D; k > 0: F -> k*D -> SiLU -> D
    loss_budget_bytes: int = DEFAULT_BUDGET_BYTES  # cap on the (M, chunk, N+1) logits of the loss
    mamba_d_state: int = 16  # backbone=mamba: SSM state size N per channel
    mamba_d_conv: int = 4  # causal depthwise conv kernel
    mamba_expand: int = 2  # inner width = expand * D
    mamba_dt_rank: int = 0  # low-rank dt; 0 = auto, ceil(s_1 / 16) (x_proj reads the smallest slice)
    mamba_ffn: bool = False  # add the nested gated FFN after each Mamba mixer
    sasrec_heads: int = 1  # backbone=sasrec: attention heads (must divide D)
    output_size: int = 0  # 0: score every size; d: hidden truncated to [:d], only size d scored (non-nested slice)

    def __post_init__(self):
        # Hydra/JSON hand over lists; the config is hashable and comparable with tuples.
        try:
            self.ladder = validate_ladder(self.ladder)
        except (ValueError, TypeError) as err:
            raise ValueError(f"ladder: {err}") from None
        self.modalities = tuple(self.modalities)
        checks = {
            "max_len": isinstance(self.max_len, int) and self.max_len >= 1,
            "backbone": isinstance(self.backbone, str) and bool(self.backbone),
            "num_blocks": isinstance(self.num_blocks, int) and self.num_blocks >= 1,
            "dropout": 0.0 <= self.dropout < 1.0,
            "ffn_multiplier": isinstance(self.ffn_multiplier, int) and self.ffn_multiplier >= 1,
            "lru_r_min": 0.0 <= self.lru_r_min < self.lru_r_max,
            "lru_r_max": self.lru_r_max < 1.0,
            "modalities": all(isinstance(m, str) and m for m in self.modalities)
            and len(set(self.modalities)) == len(self.modalities)
            and (len(self.modalities) > 0 or self.use_id_table),
            "projector_hidden": isinstance(self.projector_hidden, int) and self.projector_hidden >= 0,
            "loss_budget_bytes": isinstance(self.loss_budget_bytes, int) and self.loss_budget_bytes > 0,
            "mamba_d_state": isinstance(self.mamba_d_state, int) and self.mamba_d_state >= 1,
            "mamba_d_conv": isinstance(self.mamba_d_conv, int) and self.mamba_d_conv >= 1,
            "mamba_expand": isinstance(self.mamba_expand, int) and self.mamba_expand >= 1,
            "mamba_dt_rank": isinstance(self.mamba_dt_rank, int) and self.mamba_dt_rank >= 0,
            "mamba_ffn": isinstance(self.mamba_ffn, bool),
            "sasrec_heads": isinstance(self.sasrec_heads, int) and self.sasrec_heads >= 1
            and (self.backbone != "sasrec" or self.ladder[-1] % self.sasrec_heads == 0),
            "output_size": isinstance(self.output_size, int) and (self.output_size == 0 or self.output_size in self.ladder),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid ModelConfig.{name}: {getattr(self, name)!r}")

    @property
    def width(self) -> int:
        return self.ladder[-1]

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(**data)


class MatryoshkaRecModel(nn.Module):
    """Nested sequential recommender. ``num_items`` = N (ids 1..N, 0 = padding);
    ``feature_dims``: modality -> F, for every modality of the config."""

    def __init__(self, config: ModelConfig, num_items: int, feature_dims: dict[str, int]):
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        missing = [m for m in config.modalities if m not in feature_dims]
        if missing:
            raise ValueError(f"feature_dims lacks modalities {missing}")
        self.config, self.num_items = config, num_items
        self.feature_dims = {m: int(feature_dims[m]) for m in config.modalities}
        if any(f <= 0 for f in self.feature_dims.values()):
            raise ValueError(f"feature_dims must be positive, got {self.feature_dims}")
        self.tables = ItemTables(
            num_items, self.feature_dims, config.width, config.use_id_table, config.trainable_features
        )
        self.projector = Projector(config.ladder, sum(self.feature_dims.values()), config.projector_hidden)
        self.input_dropout = nn.Dropout(config.dropout)
        self.backbone = build_backbone(config.backbone, config)
        self.register_buffer("item_ids", torch.arange(num_items + 1), persistent=False)

    @property
    def ladder(self) -> tuple[int, ...]:
        """The sizes this model scores: the config's ladder, or ``(output_size,)`` when that is set."""
        return (self.config.output_size,) if self.config.output_size else self.config.ladder

    def load_item_features(self, features: dict[str, torch.Tensor]) -> None:
        """Copy one (N+1, F) table per modality into the torchrec tables."""
        self.tables.load_features(features)

    def item_embeddings(self) -> torch.Tensor:
        """(N+1, D): every catalog item through tables + projector; row 0 (padding) is zero."""
        features, id_emb = self.tables(self.item_ids)  # (N+1, sum F), (N+1, D)
        emb = self.projector(features, id_emb)
        return emb * (self.item_ids != 0)[:, None].to(emb.dtype)

    def encode(self, seq: torch.Tensor, item_emb: torch.Tensor | None = None) -> torch.Tensor:
        """seq (B, L) left-padded with 0 -> hidden (B, L, D), or (B, L, output_size) when set.
        ``item_emb`` (N+1, D) reused if given."""
        if item_emb is None:
            item_emb = self.item_embeddings()
        x = self.input_dropout(item_emb[seq])  # (B, L, D)
        return self.backbone(x, seq != 0)

    def loss(
        self, seq: torch.Tensor, targets: torch.Tensor, size_weights: Sequence[float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """seq (B, L), targets (B, L) next items (0 = ignored) -> (total scalar, per_size (M,) detached)."""
        item_emb = self.item_embeddings()
        hidden = self.encode(seq, item_emb)  # (B, L, D)
        keep = targets != 0
        return matryoshka_cross_entropy(
            hidden[keep], targets[keep], item_emb, self.ladder, size_weights, self.config.loss_budget_bytes
        )

    def score(
        self, seq: torch.Tensor, item_emb: torch.Tensor | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """seq (B, L) left-padded -> (M, B, N+1) scores of the last position at every size; column 0 = -inf.

        ``dtype`` (e.g. ``torch.float64``): the final dot products are accumulated in that precision.
        Evaluation uses float64 because every score carries a common offset that grows with d (item
        embeddings share a mean direction), so float32 rounding would reorder near-ties at large d.
        """
        if item_emb is None:
            item_emb = self.item_embeddings()
        last = self.encode(seq, item_emb)[:, -1]  # (B, D)
        if dtype is not None:
            last, item_emb = last.to(dtype), item_emb.to(dtype)
        scores = all_size_logits(last, item_emb, self.ladder)  # (M, B, N+1)
        scores[:, :, 0] = float("-inf")
        return scores

    def slice(self, d: int) -> MatryoshkaRecModel:
        """Standalone model of width d holding only the [:d] slices of the weights (ValueError if d not in ladder).

        Non-nested backbone (sasrec): the full-width weights with ``output_size = d`` (hidden and
        scores truncated to size d), since there is no width-d network to cut out.
        """
        ladder = truncate_ladder(self.ladder, d)
        if not self.backbone.nested:
            small = MatryoshkaRecModel(dataclasses.replace(self.config, output_size=d), self.num_items, self.feature_dims)
            small.load_state_dict(self.state_dict())
            return small.to(self.item_ids.device).train(self.training)
        config = dataclasses.replace(self.config, ladder=ladder)
        small = MatryoshkaRecModel(config, self.num_items, self.feature_dims)
        small.load_state_dict(sliced_state_dict(self, d))
        return small.to(self.item_ids.device).train(self.training)

    def save(self, directory: str | Path) -> None:
        """Write model.safetensors (weights) and config.json (config, num_items, feature_dims)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        meta = {
            "config": dataclasses.asdict(self.config),
            "num_items": self.num_items,
            "feature_dims": self.feature_dims,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> MatryoshkaRecModel:
        directory = Path(directory)
        meta = json.loads((directory / CONFIG_FILE).read_text())
        model = cls(ModelConfig.from_dict(meta["config"]), meta["num_items"], meta["feature_dims"])
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device=str(map_location)))
        return model.to(map_location)

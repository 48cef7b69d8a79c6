"""Where each supported model family keeps its vision tower, and what its blocks look like.

The patch itself is family-agnostic (it reads ``cu_seqlens`` and position embeddings from the
calls the tower makes to its blocks, so Qwen2.5-VL's window attention needs no special code);
an adapter only says how to find the tower and checks the block layout the patch relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

BLOCK_PARTS = ("norm1", "attn", "norm2", "mlp")


@dataclass(frozen=True)
class VisionFamily:
    name: str
    tower_classes: tuple[str, ...]
    model_classes: tuple[str, ...]

    def matches(self, module: nn.Module) -> bool:
        names = {cls.__name__ for cls in type(module).__mro__}
        return bool(names & set(self.tower_classes + self.model_classes))

    def find_tower(self, model: nn.Module) -> nn.Module:
        if _is_one_of(model, self.tower_classes):
            return model
        for path in ("visual", "model.visual"):
            tower = _get_path(model, path)
            if tower is not None and _is_one_of(tower, self.tower_classes):
                return tower
        raise ValueError(f"{type(model).__name__}: no {self.name} vision tower found")

    def find_language_side(self, model: nn.Module) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
        """The multimodal container (sees ``input_ids``), its language model, and the vision token ids."""
        for container in (model, getattr(model, "model", None)):
            language_model = getattr(container, "language_model", None)
            if isinstance(language_model, nn.Module) and hasattr(language_model, "layers"):
                config = getattr(container, "config", None)
                ids = tuple(
                    int(getattr(config, name))
                    for name in ("image_token_id", "video_token_id")
                    if getattr(config, name, None) is not None
                )
                if not ids:
                    raise ValueError(f"{type(model).__name__}: config has no image/video token ids")
                return container, language_model, ids
        raise TypeError(
            f"LLM-side pruning needs the whole {self.name} model ({', '.join(self.model_classes)}), "
            f"not {type(model).__name__}"
        )


FAMILIES: tuple[VisionFamily, ...] = (
    VisionFamily(
        name="Qwen2-VL",
        tower_classes=("Qwen2VisionTransformerPretrainedModel",),
        model_classes=("Qwen2VLForConditionalGeneration", "Qwen2VLModel"),
    ),
    VisionFamily(
        name="Qwen2.5-VL",
        tower_classes=("Qwen2_5_VisionTransformerPretrainedModel",),
        model_classes=("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"),
    ),
)


def supported_description() -> str:
    return "; ".join(
        f"{f.name} ({', '.join(f.model_classes + f.tower_classes)})" for f in FAMILIES
    )


def family_of(model: nn.Module) -> VisionFamily:
    for family in FAMILIES:
        if family.matches(model):
            return family
    raise TypeError(
        f"IPCV does not support {type(model).__name__}. Supported families: {supported_description()}"
    )


def check_blocks(tower: nn.Module, family: VisionFamily) -> nn.ModuleList:
    blocks = getattr(tower, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise TypeError(f"{family.name} vision tower {type(tower).__name__} has no 'blocks' list")
    for i, block in enumerate(blocks):
        missing = [p for p in BLOCK_PARTS if not hasattr(block, p)]
        if missing:
            raise TypeError(
                f"{family.name} vision block {i} ({type(block).__name__}) lacks {missing}: "
                "this transformers version changed the block layout IPCV patches"
            )
    return blocks


def _is_one_of(module: nn.Module, class_names: tuple[str, ...]) -> bool:
    return any(cls.__name__ in class_names for cls in type(module).__mro__)


def _get_path(obj: object, path: str) -> nn.Module | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None

"""What the IPCV patch needs to know about a model family, as one adapter class.

The algorithm (``ipcv/algorithm.py``) and the per-instance patches (``ipcv/vision.py``,
``ipcv/llm.py``) never name a family's attributes. An adapter says where the vision tower, its
blocks, the language model and the LM head are, how a call of the tower describes its images and
frames, how a block call is laid out, and how one Attention-Stabilization block runs on that
family's block layout. A new family is one subclass in this folder plus its entry in
``ipcv/families/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class FrameLayout:
    """How the tokens of one tower call split into images / video frames (the attention unit).

    ``frames_per_item``: frames of each image or video of the request (1 for an image);
    ``tokens_per_frame``: tokens of each frame, in the order the tower holds them.
    """

    frames_per_item: list[int]
    tokens_per_frame: list[int]


@dataclass(frozen=True)
class KeptQueries:
    """The queries an Attention-Stabilization block computes when ``as_queries="kept"``: the kept
    tokens' positions in the rebuilt sequence, and per attention segment of the call (image, frame,
    window or tile, in order) how many kept queries and how many keys it holds (host integers,
    zeros included, so the two lists pair up). ``segments`` returns those two lists; it is called
    once, when they are first wanted: a varlen (flash) kernel needs only ``boundaries`` and
    ``longest``, so where the kept counts per segment are the device's the host need not wait for
    them. ``position_embeddings``: the kept rows of the tower's rotary tables (packed layout;
    ``None`` for tiles, which take no positions). ``boundaries``: the kept queries' segment
    boundaries on the tower's device (packed layout). ``longest``: the longest segment of the kept
    queries and of the keys for a varlen kernel, known on the host (the queries' an upper bound
    where their counts are the device's)."""

    index: torch.Tensor
    segments: Callable[[], tuple[list[int], list[int]]]
    position_embeddings: Any = None
    boundaries: torch.Tensor | None = None
    longest: tuple[int, int] | None = None

    @cached_property
    def _segments(self) -> tuple[list[int], list[int]]:
        return self.segments()

    @property
    def lengths(self) -> list[int]:
        return self._segments[0]

    @property
    def key_lengths(self) -> list[int]:
        return self._segments[1]


@dataclass(frozen=True)
class LanguageSide:
    """The multimodal container (it sees ``input_ids``), its language model, and the token ids
    that mark image / video positions in the prompt."""

    container: nn.Module
    language_model: nn.Module
    vision_token_ids: tuple[int, ...]


class VisionFamily:
    """One model family as the patch sees it. Subclasses fill in the family-specific parts."""

    name: str = ""
    tower_classes: tuple[str, ...] = ()
    model_classes: tuple[str, ...] = ()
    tower_paths: tuple[str, ...] = ()  # attribute paths from a whole model to its vision tower
    layout: str = "packed"  # "packed": one sequence with cu_seqlens (vision.py); "tiled": tiles as batch rows
    block_parts: tuple[str, ...] = ()  # attributes every vision block must have

    # -- where things are -------------------------------------------------------------------
    def matches(self, module: nn.Module) -> bool:
        return _is_one_of(module, self.tower_classes + self.model_classes)

    def is_tower(self, module: nn.Module) -> bool:
        return _is_one_of(module, self.tower_classes)

    def find_tower(self, model: nn.Module) -> nn.Module:
        if self.is_tower(model):
            return model
        for path in self.tower_paths:
            tower = _get_path(model, path)
            if tower is not None and self.is_tower(tower):
                return tower
        raise ValueError(f"{type(model).__name__}: no {self.name} vision tower found")

    def blocks(self, tower: nn.Module) -> nn.ModuleList:
        """The tower's block list, checked against the layout the patch relies on."""
        blocks = self._block_list(tower)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise TypeError(f"{self.name} vision tower {type(tower).__name__} has no block list")
        for i, block in enumerate(blocks):
            missing = [p for p in self.block_parts if not hasattr(block, p)]
            if missing:
                raise TypeError(
                    f"{self.name} vision block {i} ({type(block).__name__}) lacks {missing}: "
                    "this transformers version changed the block layout IPCV patches"
                )
        return blocks

    def find_language_side(self, model: nn.Module) -> LanguageSide:
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
                return LanguageSide(container, language_model, ids)
        raise TypeError(
            f"LLM-side pruning needs the whole {self.name} model ({', '.join(self.model_classes)}), "
            f"not {type(model).__name__}"
        )

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model whose configuration the patch cannot serve (before anything is patched)."""

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        head = getattr(model, "lm_head", None)
        return head if isinstance(head, nn.Module) else None

    # -- one call of the tower ----------------------------------------------------------------
    def frame_layout(self, tower: nn.Module, args: tuple, kwargs: dict) -> FrameLayout:
        """Images / frames of a tower call, from the arguments the tower was called with."""
        raise NotImplementedError

    def item_rows(self, config: Any, input_ids: torch.Tensor, frames: FrameLayout) -> list[int] | None:
        """The batch row (request) of each image / video of a tower call, read from the prompts'
        placeholder tokens; None when they do not match the call (then it is one request)."""
        return None

    def split_block_call(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict[str, Any]]:
        """A block call as ``(hidden_states, keyword arguments)``."""
        raise NotImplementedError

    def stabilized_block(
        self,
        block: nn.Module,
        kept_states: torch.Tensor,
        full_states: torch.Tensor,
        kept: torch.Tensor,
        kwargs: dict[str, Any],
        queries: KeptQueries | None = None,
    ) -> torch.Tensor:
        """One Attention-Stabilization block: attention over the rebuilt ``full_states`` (with the
        tower's own full-sequence arguments), its output added to the kept tokens only, then the
        MLP on the kept tokens. Returns the kept tokens' new states. With ``queries``, the block's
        attention module is called with ``ipcv_queries=queries`` and returns the kept rows only
        (its forward is then ``kept_query_attention``'s)."""
        raise NotImplementedError

    def kept_query_attention(self, index: int, attention: nn.Module, original: Any) -> Any:
        """A ``forward`` for one block's attention module (installed per instance on the
        Attention-Stabilization blocks when ``as_queries="kept"``): called with ``ipcv_queries``,
        it is ``attend_kept``; called without, it is ``original``. Going through the module's own
        call keeps its hooks (the study records token counts there)."""

        def forward(hidden_states: torch.Tensor, *args: Any, ipcv_queries: KeptQueries | None = None,
                    **kwargs: Any) -> Any:
            if ipcv_queries is None:
                return original(hidden_states, *args, **kwargs)
            return self.attend_kept(attention, hidden_states, ipcv_queries, kwargs)

        return forward

    def attend_kept(self, attention: nn.Module, hidden: torch.Tensor, queries: KeptQueries,
                    kwargs: dict[str, Any]) -> Any:
        """What ``attention`` returns for the kept rows of ``hidden`` only (its output in the
        module's own return form): queries and the output projection for ``queries.index``, keys
        and values for every token, each attention segment attending within itself."""
        raise NotImplementedError

    def attention_and_mlp(self, block: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The attention and MLP submodules of a block (the study records their token counts)."""
        raise NotImplementedError

    def _block_list(self, tower: nn.Module) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} ({', '.join(self.model_classes + self.tower_classes)})"


def attention_function(attention: nn.Module):
    """The attention kernel a transformers attention module is configured to call (eager, sdpa,
    flash...), looked up as the module itself does, so kept-query attention runs the same kernel."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = sys.modules[type(attention).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager)


def _is_one_of(module: nn.Module, class_names: tuple[str, ...]) -> bool:
    return any(cls.__name__ in class_names for cls in type(module).__mro__)


def _get_path(obj: object, path: str) -> nn.Module | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def placeholder_runs(mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """Row and length of every run of True in a [B, S] mask of placeholder tokens, in row-major
    order: each run is one image / video (or one tile) of a prompt."""
    edges = torch.diff(torch.nn.functional.pad(mask.to(torch.int8), (1, 1)), dim=1)
    starts, ends = (edges == 1).nonzero().tolist(), (edges == -1).nonzero().tolist()
    return [row for row, _ in starts], [end - start for (_, start), (_, end) in zip(starts, ends)]

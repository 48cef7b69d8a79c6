"""Settings of the vision-side compression, validated before any forward runs.

A config is plain data (a frozen dataclass): it can be hashed into a cell id by the study, and a
wrong value fails at construction with the field, the value and the allowed range, rather than as
an index error deep inside a forward pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

Selection = Literal["feature_diff", "random"]
Restore = Literal["ngr", "frozen"]
Budget = Literal["global", "per_image"]
NeighborScope = Literal["global", "same_image"]
AsQueries = Literal["all", "kept"]
LLMMethod = Literal["dart", "fastv"]
LLM_METHODS: tuple[str, ...] = get_args(LLMMethod)

_CHOICES: dict[str, tuple[str, ...]] = {
    "selection": get_args(Selection),
    "restore": get_args(Restore),
    "budget": get_args(Budget),
    "neighbor_scope": get_args(NeighborScope),
    "as_queries": get_args(AsQueries),
}


def _fail(field: str, value: Any, expected: str) -> None:
    raise ValueError(f"IPCVConfig.{field} must be {expected}, got {value!r}")


def _check_int(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, value, f"an integer >= {minimum}")
    if value < minimum:
        _fail(field, value, f"an integer >= {minimum}")


@dataclass(frozen=True)
class IPCVConfig:
    """IPCV settings (see docs/method.md).

    Defaults are the authors' published script settings (K=3, r=0.65, A=7, k=10) with the
    published joint selection ("global" budget and neighbour scope).

    - ``prune_layer`` (K): tokens are scored by how much block K-1 changed them; K >= 2.
    - ``reduction_ratio`` (r): share of tokens removed, in [0, 1); ``floor(N * (1 - r))`` kept.
    - ``as_layers`` (A): blocks K .. K+A-1 attend over the restored full sequence.
    - ``neighbors`` (k): kept neighbours used to restore each removed token.
    - ``selection``: "feature_diff" (the paper) or "random" (a control at the same budget).
    - ``restore``: "ngr" (neighbour-guided reconstruction) or "frozen" (removed tokens keep their
      layer-K state: the no-NGR ablation).
    - ``budget``: "global" (over all images/frames of a request, as published) or "per_image"
      (``floor(n_i * (1 - r))`` per image or video frame).
    - ``neighbor_scope``: "global" (as published: a neighbour may come from another image) or
      "same_image".
    - ``as_queries``: which queries the Attention-Stabilization blocks compute. "all" (as
      published): every token of the rebuilt sequence attends, although only the kept tokens'
      outputs go on. "kept": only the kept tokens' queries (and the output projection) are
      computed, against keys and values of every token: the same kept outputs (up to the kernels'
      rounding) for fewer FLOPs (about 20% of IPCV's vision FLOPs at 1344², docs/benchmarks.md).
    - ``seed``: seeds "random" selection so that a run is reproducible.
    """

    prune_layer: int = 3
    reduction_ratio: float = 0.65
    as_layers: int = 7
    neighbors: int = 10
    selection: Selection = "feature_diff"
    restore: Restore = "ngr"
    budget: Budget = "global"
    neighbor_scope: NeighborScope = "global"
    as_queries: AsQueries = "all"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("prune_layer", self.prune_layer, 2)
        ratio = self.reduction_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            _fail("reduction_ratio", ratio, "a number in [0, 1)")
        _check_int("as_layers", self.as_layers, 0)
        _check_int("neighbors", self.neighbors, 1)
        _check_int("seed", self.seed, 0)
        for field, allowed in _CHOICES.items():
            value = getattr(self, field)
            if value not in allowed:
                _fail(field, value, "one of " + ", ".join(repr(a) for a in allowed))

    def check_depth(self, depth: int) -> None:
        """Fail early when the blocks this config names do not exist in an encoder of ``depth``."""
        if self.prune_layer >= depth:
            _fail("prune_layer", self.prune_layer, f"< the vision encoder depth ({depth})")
        if self.prune_layer + self.as_layers > depth:
            raise ValueError(
                f"IPCVConfig.prune_layer + as_layers must be <= the vision encoder depth ({depth}), "
                f"got {self.prune_layer} + {self.as_layers} = {self.prune_layer + self.as_layers}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fail_llm(field: str, value: Any, expected: str) -> None:
    raise ValueError(f"LLMPruneConfig.{field} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class LLMPruneConfig:
    """LLM-side pruning of image/video tokens during prefill (see docs/llm_pruning.md).

    - ``method``: "dart" (duplication-aware: keep the image tokens least similar to pivots) or
      "fastv" (keep the image tokens most attended by the last prompt token).
    - ``layer`` (K'): the tokens leave the sequence from decoder layer K' on, chosen from what
      layer K'-1 computed; K' >= 1.
    - ``reduction_ratio`` (r'): share of image/video tokens removed, in [0, 1).
    - ``pivot_image_tokens`` / ``pivot_text_tokens``: DART's pivots (4 + 4 in the authors' runs).
    """

    method: LLMMethod = "dart"
    layer: int = 2
    reduction_ratio: float = 0.778
    pivot_image_tokens: int = 4
    pivot_text_tokens: int = 4

    def __post_init__(self) -> None:
        if self.method not in LLM_METHODS:
            _fail_llm("method", self.method, "one of " + ", ".join(repr(m) for m in LLM_METHODS))
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            _fail_llm("layer", self.layer, "an integer >= 1")
        ratio = self.reduction_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            _fail_llm("reduction_ratio", ratio, "a number in [0, 1)")
        for field in ("pivot_image_tokens", "pivot_text_tokens"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                _fail_llm(field, value, "an integer >= 0")
        if self.method == "dart" and self.pivot_image_tokens + self.pivot_text_tokens == 0:
            raise ValueError("LLMPruneConfig: DART needs at least one pivot (pivot_image_tokens + pivot_text_tokens >= 1)")

    def check_depth(self, n_layers: int) -> None:
        if self.layer >= n_layers:
            _fail_llm("layer", self.layer, f"< the number of decoder layers ({n_layers})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

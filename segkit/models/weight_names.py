"""Published checkpoints' parameter names -> segkit's, so their files load as data.

- `segformer_from_hf`: Hugging Face SegFormer files (``nvidia/mit-b0``,
  ``nvidia/segformer-b0-finetuned-ade-512-512``, as ``save_pretrained`` writes them) ->
  `segkit.models.SegFormer` names, which are the official release's (``backbone.block1.0...``,
  ``decode_head.linear_c4...``); their separate key and value projections are joined into the
  official ``kv`` layer.
- `segformer_from_official`: official MiT ImageNet files (``patch_embed1...``, no prefix) and
  official / MMSegmentation SegFormer checkpoints (``backbone.*``, ``decode_head.*``).
- `smp_deeplabv3plus`: segmentation_models.pytorch's ``DeepLabV3Plus`` on a torchvision-
  layout encoder (its ResNets) -> `segkit.models.DeepLabV3Plus`.

Each returns a new ``{name: tensor}`` dict; names it does not know pass through unchanged, so
`segkit.io.partial_load.load_weights` reports them as unexpected instead of losing them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["segformer_from_hf", "segformer_from_official", "smp_deeplabv3plus", "rename"]


def _one_based(template: str):
    """A ``re.sub`` replacement: Hugging Face counts stages from 0, the official code from 1."""
    return lambda match: template.format(int(match[1]) + 1)


# Hugging Face (transformers' published layout) -> official, applied in order to each key
_HF_SEGFORMER = (
    (
        r"^segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm\.",
        _one_based("backbone.patch_embed{}.norm."),
    ),
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.", _one_based("backbone.patch_embed{}.")),
    (r"^segformer\.encoder\.block\.(\d)\.", _one_based("backbone.block{}.")),
    (r"^segformer\.encoder\.layer_norm\.(\d)\.", _one_based("backbone.norm{}.")),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.sr\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.layer_norm_1\.", ".norm1."),
    (r"\.layer_norm_2\.", ".norm2."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"^decode_head\.linear_c\.(\d)\.", _one_based("decode_head.linear_c{}.")),
    (r"^decode_head\.linear_fuse\.weight$", "decode_head.linear_fuse.conv.weight"),
    (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
    (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
)
_HF_KEY_VALUE = re.compile(r"^(.*)\.attention\.self\.(key|value)\.(weight|bias)$")

# segmentation_models.pytorch DeepLabV3Plus -> segkit DeepLabV3Plus
_SMP_DEEPLABV3PLUS = (
    (r"^encoder\.", "encoder.body."),
    (r"^decoder\.aspp\.0\.convs\.0\.0\.", "decoder.aspp.branches.0.conv."),
    (r"^decoder\.aspp\.0\.convs\.0\.1\.", "decoder.aspp.branches.0.bn."),
    (r"^decoder\.aspp\.0\.convs\.([123])\.0\.0\.", r"decoder.aspp.branches.\1.depthwise."),
    (r"^decoder\.aspp\.0\.convs\.([123])\.0\.1\.", r"decoder.aspp.branches.\1.pointwise."),
    (r"^decoder\.aspp\.0\.convs\.([123])\.0\.", r"decoder.aspp.branches.\1.conv."),  # not separable
    (r"^decoder\.aspp\.0\.convs\.([123])\.1\.", r"decoder.aspp.branches.\1.bn."),
    (r"^decoder\.aspp\.0\.convs\.4\.1\.", "decoder.aspp.pooling.conv."),
    (r"^decoder\.aspp\.0\.convs\.4\.2\.", "decoder.aspp.pooling.bn."),
    (r"^decoder\.aspp\.0\.project\.0\.", "decoder.aspp.project.conv."),
    (r"^decoder\.aspp\.0\.project\.1\.", "decoder.aspp.project.bn."),
    (r"^decoder\.aspp\.1\.0\.", "decoder.aspp_conv.depthwise."),
    (r"^decoder\.aspp\.1\.1\.", "decoder.aspp_conv.pointwise."),
    (r"^decoder\.aspp\.2\.", "decoder.aspp_conv.bn."),
    (r"^decoder\.block1\.0\.", "decoder.low_level.conv."),
    (r"^decoder\.block1\.1\.", "decoder.low_level.bn."),
    (r"^decoder\.block2\.0\.0\.", "decoder.fuse.depthwise."),
    (r"^decoder\.block2\.0\.1\.", "decoder.fuse.pointwise."),
    (r"^decoder\.block2\.1\.", "decoder.fuse.bn."),
    (r"^segmentation_head\.0\.", "classifier."),
)
_OFFICIAL_ENCODER = re.compile(r"^(patch_embed\d|block\d|norm\d)\.")


def rename(state: Mapping[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    """Apply ``(pattern, replacement)`` rules in order to every key (each rule at most once)."""
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key, count=1)
        out[key] = value
    return out


def segformer_from_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face SegFormer names -> segkit's (= official); key + value -> ``kv``."""
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    rest = {}
    for key, value in state.items():
        match = _HF_KEY_VALUE.match(key)
        if match:
            pairs.setdefault((match[1], match[3]), {})[match[2]] = value
        else:
            rest[key] = value
    for (prefix, kind), parts in pairs.items():
        if set(parts) == {"key", "value"}:  # official layout: keys first, then values
            rest[f"{prefix}.attention.self.kv.{kind}"] = torch.cat([parts["key"], parts["value"]])
        else:
            rest.update({f"{prefix}.attention.self.{p}.{kind}": v for p, v in parts.items()})
    return rename(rest, _HF_SEGFORMER + ((r"\.attention\.self\.kv\.", ".attn.kv."),))


def segformer_from_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official MiT ImageNet names (no prefix) get ``backbone.``; the rest is unchanged."""
    return {(f"backbone.{k}" if _OFFICIAL_ENCODER.match(k) else k): v for k, v in state.items()}


def smp_deeplabv3plus(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segmentation_models.pytorch ``DeepLabV3Plus`` names -> `segkit.models.DeepLabV3Plus`."""
    return rename(state, _SMP_DEEPLABV3PLUS)

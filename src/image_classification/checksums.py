"""Content checksums of saved artefacts: what a later stage checks before it trusts a file.

One definition serves every artefact: a tensor's checksum is the sha256 of its dtype, shape, name
and bytes (:func:`tensor_sha256`); a JSON record's is the sha256 of its canonical JSON
(:func:`json_sha256`). sha256 is the faster of the standard library's strong hashes here (see
docs/decisions/0035-artefact-checksums.md).
"""

from __future__ import annotations

import hashlib
import json

import torch


def tensors_sha256(tensors: dict[str, torch.Tensor], header: str = "") -> str:
    """sha256 of ``header`` and every tensor's name and bytes, in name order."""
    digest = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def tensor_sha256(name: str, tensor: torch.Tensor) -> str:
    """sha256 of one tensor's dtype, shape, name and bytes: a flipped bit in any of them changes it."""
    return tensors_sha256({name: tensor}, header=f"{tensor.dtype}{list(tensor.shape)}")


CONTENT_SHA256 = "content_sha256"  # the key of a JSON record's checksum of its other contents


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def json_sha256(record: dict) -> str:
    """sha256 of ``record`` as canonical JSON (sorted keys), which a JSON round trip leaves unchanged."""
    return text_sha256(json.dumps(record, sort_keys=True, default=str))

"""Nodes of the score pipeline: the one pass that scores and embeds every indexed image.

evaluate, embedding_analysis and zero_shot read its output instead of scoring the images again,
so a fine-tuned backbone costs one pass over the files, not three.
"""

from __future__ import annotations

import logging

import pandas as pd

from image_classification.artefacts import Checkpoint, FeatureCache
from image_classification.parameters.runtime import RuntimeConfig
from image_classification.runtime.choice import torch_device
from image_classification.runtime.scoring import scores_from_cache, scores_from_images

logger = logging.getLogger(__name__)


def score_index(model_checkpoint: dict, backbone_features: dict, image_index: pd.DataFrame,
                runtime: RuntimeConfig) -> dict:
    """Score (probability of valid), embed and pool every indexed image, unseen kinds included.

    A checkpoint trained on the frozen backbone reads the train stage's feature cache (only the
    head runs); one with fine-tuned blocks runs the whole model over the files. A cache that does
    not describe this index and this backbone stops the run and says to rerun train.
    """
    checkpoint, runtime = Checkpoint.from_payload(model_checkpoint), RuntimeConfig.from_params(runtime)
    if checkpoint.fine_tuned_blocks == 0:
        cache = FeatureCache.from_payload(backbone_features).check(
            image_index, checkpoint.backbone, checkpoint.head_input, checkpoint.backbone_sha256(), checkpoint.input_size)
        scored = scores_from_cache(checkpoint, cache, torch_device(runtime))
    else:
        scored = scores_from_images(checkpoint, image_index, runtime)
    unreadable = sum(1 for error in scored.errors if error)
    logger.info("Scored %d images once (%s; %d unreadable, left out of every later metric)", len(image_index),
                scored.source.replace("_", " "), unreadable)
    return scored.to_payload()

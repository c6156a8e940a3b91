"""Seeding and recipe keys shared by every training recipe (zoo.train's classifiers, zoo.gpt2's decoder)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from typing import Any

import numpy as np


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def config_hash(name: str, recipe: Any, data_sha: str) -> str:
    blob = json.dumps({"model": name, "recipe": dataclasses.asdict(recipe), "data": data_sha}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

"""edgeattn model zoo: models, specs, data, tokenizer, training, registry."""
from zoo.registry import BuiltModel, CheckpointError, create_model, list_models, load_checkpoint  # noqa: F401
from zoo.spec import DimRange, ModelSpec, TensorSpec  # noqa: F401

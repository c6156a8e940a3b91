"""The pipeline's common layer (floor 2, beside the judge): what every stage needs and a device never does. The
artifact layout (``pipeline.artifacts``: ModelRef), the stage CLI's error rules (``pipeline.stage``) and the
hardening suite's fault hook (``pipeline.faults``). Imports only from runtime/."""

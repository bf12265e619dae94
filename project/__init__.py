"""A PyTorch Lightning project: typed structs, a BaseModel with variants, DataModules, callbacks.

Where things go:
    structs/    Example (inputs), Prediction (outputs), Loss (named weighted terms)
    data/       LightningDataModules yielding Examples
    model/      BaseModel and its variants
    metrics/    torchmetrics collections fed by Example/Prediction
    callbacks/  optional pipeline pieces (visualizations, writers)
    cli.py      `python -m project`
"""

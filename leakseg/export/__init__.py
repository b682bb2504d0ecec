"""Export: a checkpoint -> a TorchServe archive, and the layouts the deployments read.

``exporter``: the export step end to end (`leakseg export`: import, prompt bank, trace, verify, archive);
``graph``: tracing the clip graph (every frame encoded once, every triplet decoded) and checking it;
``archive``: writing the TorchServe archive (.mar) with torch-model-archiver;
``kserve_layout``: the model storage layout KServe's TorchServe runtime reads (`leakseg export --kserve`).
"""

"""Serving: the TorchServe handler, the KServe runtime, and the process management behind `leakseg serve`.

``parse``: what TorchServe hands a handler -> a ClipRequest, and its frames (pure, no TorchServe needed);
``oip``: the Open Inference Protocol v2 form of a request, read the same way by both servers;
``handler``: ``LeakSegHandler``, the TorchServe handler (transport only: parse, call the Predictor, respond);
``torchserve_entry``: the one-class module an archive carries, which TorchServe imports (``ClipHandler``);
``torchserve_process``: starts, checks and stops TorchServe processes (`leakseg serve`, the tests);
``kserve_runtime``: the Open Inference Protocol model server on KServe's Python server (`leakseg kserve`);
``metrics.yaml``: the handler's metric declarations.
Nothing is imported here, so ``import leakseg.serving.parse`` stays light.
"""

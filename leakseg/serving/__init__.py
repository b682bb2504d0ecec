"""Serving: the TorchServe handler and the process management behind `leakseg serve`.

``parse`` turns what TorchServe hands a handler into a ClipRequest (pure, no TorchServe needed);
``handler.LeakSegHandler`` is the handler (transport only: parse, call the Predictor, respond);
``server`` starts and stops TorchServe; ``metrics.yaml`` declares the handler's metrics.
Nothing is imported here, so ``import leakseg.serving.parse`` stays light.
"""

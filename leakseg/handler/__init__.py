"""The TorchServe side of leakseg.

``requests`` turns what TorchServe hands a handler into checked requests (pure, no TorchServe
needed); ``service.LeakSegHandler`` is the handler; ``metrics.yaml`` declares its metrics.
Nothing is imported here, so ``import leakseg.handler.requests`` stays light.
"""

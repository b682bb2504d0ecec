"""The module TorchServe imports from a leakseg archive.

TorchServe wants exactly one class defined in the handler module; the logic lives in the
installed leakseg package (leakseg.serving.handler), so archives stay small and one upgrade of
leakseg updates every model's handler.
"""

from leakseg.serving.handler import LeakSegHandler


class JVLGSHandler(LeakSegHandler):
    pass

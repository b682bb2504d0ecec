"""The module TorchServe imports from a leakseg archive.

TorchServe wants exactly one class defined in the handler module and finds it by that, not by
its name (the archive's manifest names only this file), so the class is named for what it
handles, a clip of any model family. The logic lives in the installed leakseg package
(leakseg.serving.handler), so archives stay small and one upgrade of leakseg updates every
model's handler; archives written before the rename hold their own copy of this file, which
subclasses the same LeakSegHandler.
"""

from leakseg.serving.handler import LeakSegHandler


class ClipHandler(LeakSegHandler):
    pass

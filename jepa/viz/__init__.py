"""Pictures of what training sees and learns (``jepa viz``): masks and views (:mod:`.masks`), token
features (:mod:`.features`), nearest neighbours (:mod:`.neighbours`), training curves (:mod:`.curves`),
evaluation reports (:mod:`.report`), an HTML page of several pictures (:mod:`.gallery`).

Only the modules that draw import matplotlib (through :mod:`.figure`), and the CLI imports them inside
its commands, so ``jepa`` starts as fast as without them. What a picture needs from a modality is two
optional hooks, ``Modality.display_frames`` and ``Modality.token_boxes`` (:mod:`.display` checks them;
:mod:`.pixels` implements them for pixel grids).
"""

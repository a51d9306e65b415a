"""How the served score and its threshold are chosen and measured: the candidate (:mod:`.candidate`),
the threshold and its warnings (:mod:`.operating_point`), the grouped cross-validation on small data
(:mod:`.cross_validation`) and the test report (:mod:`.report`). The threshold rules themselves live in
:mod:`image_classification.metrics`."""

"""Every figure the pipelines draw, one module per subject.

- :mod:`.style`: the shared look (colours, markers, grid, the "nothing to show" panel).
- :mod:`.evaluation`: precision-recall, ROC, score histograms, confusion matrices, error gallery.
- :mod:`.defect_maps`: images with their defect maps drawn over them (gallery, colour key, kedro viz view).
- :mod:`.training`: loss and validation curves per epoch.
- :mod:`.embedding`: explained variance, PCA scatter (2D and interactive 3D), clusters vs labels.
- :mod:`.zero_shot`: unseen kinds in the embedding, anomaly scores per kind, detectors compared.

Plot functions take plain values (arrays, DataFrames, dicts of numbers, the small dataclasses
defined beside them) and return a figure: they fit no model, sample nothing and read no file.
That work stays in the pipeline nodes, which hand the results over. Static figures are
:class:`matplotlib.figure.Figure` objects built directly, never through ``pyplot`` (whose global
registry keeps every figure alive until closed); interactive ones are plotly figures.
"""

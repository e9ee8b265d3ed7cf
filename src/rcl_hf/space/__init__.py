"""The Gradio Space's logic (everything but the layout in ``spaces_demo/app.py``).

* :mod:`rcl_hf.space.inputs` — uploads: bytes/size caps, decoding with :func:`rcl_hf.data.open_image_rgb`;
* :mod:`rcl_hf.space.core` — models, scoring (:func:`rcl_hf.predict`), OOD referral, examples, start-up checks;
* :mod:`rcl_hf.space.render` — the decision card HTML and the markdown summaries;
* :mod:`rcl_hf.space.handlers` — the page's event handlers (admission, the "busy" answer, outputs per event);
* :mod:`rcl_hf.space.batching` — concurrent requests sharing forward passes; CPU threads and Gradio's queue;
* :mod:`rcl_hf.space.traced` — the forward pass traced once, run without the GIL;
* :mod:`rcl_hf.space.train` — the one-command real-data model pair (frozen EfficientNet-Lite0, CE + RCL, OOD guard).
"""

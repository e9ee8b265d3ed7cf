"""The Gradio Space's logic (everything but the layout in ``spaces_demo/app.py``).

* :mod:`rcl_hf.space.inputs` — uploads: bytes/size caps, decoding with :func:`rcl_hf.data.open_image_rgb`;
* :mod:`rcl_hf.space.loading` — the served models, each with its decision layer per offered target risk;
* :mod:`rcl_hf.space.answer` — an image's answer: the forward pass and :meth:`rcl_hf.DecisionLayer.apply`, worded;
* :mod:`rcl_hf.space.admission` — at most so many analyses in flight, "busy" at once past that;
* :mod:`rcl_hf.space.examples` — the example gallery;
* :mod:`rcl_hf.space.startup` — start-up checks (which model, a free port) before any model loads;
* :mod:`rcl_hf.space.render` — the decision card HTML and the markdown summaries;
* :mod:`rcl_hf.space.handlers` — the page's event handlers (admission, the "busy" answer, outputs per event);
* :mod:`rcl_hf.space.batching` — concurrent requests sharing forward passes; CPU threads and Gradio's queue;
* :mod:`rcl_hf.space.traced` — the forward pass traced once, run without the GIL;
* :mod:`rcl_hf.space.train` — the one-command real-data model pair (frozen EfficientNet-Lite0, CE + RCL, OOD guard).
"""

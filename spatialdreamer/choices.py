"""The names a user chooses from (depth model, layout, eyes, codec, pixel format).

Kept free of torch so that ``--help`` and argument checks answer at once; the modules that
implement each choice import their list from here.
"""

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
FORMATS = ("full-sbs", "half-sbs", "full-tb", "half-tb", "anaglyph")
EYES = ("both", "right", "left")
CODECS = ("auto", "h264", "h265", "vp9", "mpeg4")
PIX_FMTS = ("auto", "yuv420p", "yuv420p10le", "yuv444p", "yuv444p10le")

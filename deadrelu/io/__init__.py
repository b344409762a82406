"""Files in and out: reading model files safely, writing models and outputs atomically.

`loading` reads `.keras`, `.h5`, SavedModel folders and `--architecture` JSON (through `safety`'s
checks and `legacy`'s repairs); `saving` writes fixed models; `files` owns output paths and atomic
writes. Nothing here knows about ReLUs.
"""

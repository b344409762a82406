"""Fixing a model: rewrite its ReLUs (`patch`), re-initialise dead units (`revive`), remove them
(`prune`), and `retrain` to compare.

`graph` and `propagation` describe how units connect; `rewriter` rebuilds a model layer by layer;
`edits` changes weights; `check` proves a fix left the outputs as they were.
"""

"""The scan engine: the sites of a model, one pass over the data, the statistics of every unit.

`sites` finds where ReLUs are applied, `interception` catches op-level ReLUs as they run, `probe`
streams the data through the model (`steps` builds the compiled step, `reductions` and the fused
`deadrelu.kernel` reduce each batch), `losses` and `distribute` cover gradients and strategies
(`mesh`: JAX's `keras.distribution`), `scanner` turns one pass into a `Report`.
"""

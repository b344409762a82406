"""The why stage: why the dead units died (`deadrelu.scan(..., why=True)`, `deadrelu scan --why`).

After a scan has measured every unit (and its pre-activation: `margin`, `preact_*`), this stage
explains the dead ones:

- `baseline`: the initialisation baseline — the dead fraction of every site in freshly
  initialised copies of the model (each layer's own initialisers, seeds 0, 1, 2);
- `causes`: the cause of every dead unit (starved, output_relu, born_dead, killed_in_training,
  data_dependent; first match wins) with its evidence;
- `training`: the training configuration stored with the model (optimizer, learning rate and its
  ratio to the optimizer's default, loss);
- `findings`: model-level findings (non-finite values, input scale, a ReLU on an output, a site
  100% dead);
- `advice`: one recommendation per cause;
- `analyse`: the entry point that runs them in order and fills the report.

The rules and constants are documented in docs/fixing.md#why-units-die and the fields in
docs/report-format.md.
"""

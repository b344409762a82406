"""`analyse`: a scan's report → the same report with the why stage filled in (`scan(..., why=True)`).

In order: the initialisation baseline (`deadrelu.diagnosis.baseline`), the cause of every dead
unit with its evidence (`deadrelu.diagnosis.causes`: per site `dead_causes`, `causes`,
`cause_evidence`), then the report-level `why`: the baseline's numbers, the training configuration
stored with the model (`deadrelu.diagnosis.training`), the model-level findings
(`deadrelu.diagnosis.findings`) and a recommendation per cause (`deadrelu.diagnosis.advice`).
"""

from __future__ import annotations

from deadrelu.diagnosis.advice import recommendations
from deadrelu.diagnosis.baseline import BASELINE_SAMPLES, SEEDS, init_baseline
from deadrelu.diagnosis.causes import assign_causes
from deadrelu.diagnosis.findings import model_findings
from deadrelu.diagnosis.training import training_config
from deadrelu.errors import UnsupportedModelError


def analyse(report, model, probe_data, *, batch_size: int = 256, seeds=SEEDS, samples: int = BASELINE_SAMPLES):
    """Fills in why the report's dead units died.

    Args:
        report: The scan's `Report` (changed in place and returned).
        model: The scanned `keras.Model` (never modified: the baseline runs on a copy).
        probe_data: The scan's `deadrelu.data.ProbeData` (the baseline reads its first samples).
        batch_size: Samples per step of the baseline's passes. Defaults to `256`.
        seeds: Seeds of the baseline. Defaults to `(0, 1, 2)`.
        samples: Samples per baseline pass, at most. Defaults to `256`.

    Returns:
        `report`, with `why`, `summary["causes"]` and every site's `dead_causes`, `causes` and
        `cause_evidence`.

    Example:
        >>> report = analyse(report, model, probe_data, batch_size=256)
        >>> report.site("dense").causes
        {'killed_in_training': 12}
    """
    baseline = None
    if probe_data.distributed:
        report.notes.append(
            "init baseline skipped: the data is a distributed dataset; no unit is judged born dead "
            "(scan the same data as arrays or a tf.data.Dataset for the baseline)"
        )
    else:
        try:
            baseline = init_baseline(model, probe_data, batch_size=batch_size, seeds=seeds, samples=samples)
        except UnsupportedModelError as exc:
            report.notes.append(f"init baseline skipped: {exc}; no unit is judged born dead")
    if baseline is not None:
        report.notes.extend(note for note in baseline.notes if note not in report.notes)
    assign_causes(report, model, baseline)
    report.why = {
        "init_baseline": None if baseline is None else baseline.to_dict(),
        "training": training_config(model),
        "findings": [],
        "recommendations": [],
    }
    # The findings and the advice read the causes (and the advice the findings) just filled in.
    report.why["findings"] = model_findings(report, model)
    report.why["recommendations"] = recommendations(report)
    return report
